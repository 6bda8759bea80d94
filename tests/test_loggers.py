import csv
import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ckd.benchmarking.loggers import check_loggers
from ckd.benchmarking.run_config import RunConfig, result_path
from ckd.benchmarking.runner import run_to_file

CONFIG = RunConfig("split-digits", "kd-replay", seed=0, epochs=1, max_train_per_experience=120,
                   method_args={"mem_size": 40})


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """The same run twice: without loggers, and with the CSV, TensorBoard and text loggers."""
    plain, logged = tmp_path_factory.mktemp("plain"), tmp_path_factory.mktemp("logged")
    run_to_file(CONFIG, plain)
    run_to_file(CONFIG, logged, loggers=["csv", "tensorboard", "text"])
    path = result_path(logged, CONFIG)
    return json.loads(result_path(plain, CONFIG).read_text()), json.loads(path.read_text()), logged / "logs" / path.stem


def test_loggers_leave_the_result_unchanged(logged):
    plain, with_loggers, _ = logged
    assert with_loggers["accuracy_matrix"] == plain["accuracy_matrix"]
    assert with_loggers["diagnostics"] == plain["diagnostics"]
    assert plain["config"] == with_loggers["config"]  # loggers are not part of the run's identity


def test_csv_log_holds_the_accuracy_matrix(logged):
    _, result, log_dir = logged
    with open(log_dir / "csv" / "eval_results.csv") as f:
        rows = list(csv.DictReader(f))
    matrix = result["accuracy_matrix"]
    assert len(rows) == len(matrix) ** 2  # every test experience after every training experience
    for row in rows:
        i, j = int(row["training_exp"]), int(row["eval_exp"])
        assert float(row["eval_accuracy"]) == pytest.approx(matrix[i][j], abs=1e-4)


def test_tensorboard_events_hold_accuracy_and_distillation_metrics(logged):
    _, result, log_dir = logged
    events = EventAccumulator(str(log_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    last = result["accuracy_matrix"][-1]
    for j, expected in enumerate(last):
        values = events.Scalars(f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}")
        assert len(values) == len(last) and values[-1].value == pytest.approx(expected, abs=1e-6)
    # The student against its teacher on the experiences the teacher was trained on, as in the result.
    agreement = events.Scalars("Distillation_agreement/eval_phase/test_stream/Task000/Exp000")
    assert len(agreement) == len(last) - 1  # no teacher while the first experience trains
    assert all(0.0 <= a.value <= 1.0 for a in agreement)
    assert "ExperienceForgetting/eval_phase/test_stream/Task000/Exp000" in tags
    assert (log_dir / "log.txt").read_text().count("Top1_Acc_Stream/eval_phase/test_stream") == len(last)


def test_logger_names_are_checked():
    assert check_loggers(["csv", "tensorboard", "csv"]) == ("csv", "tensorboard")
    with pytest.raises(ValueError, match=r"unknown logger\(s\) \['mlflow'\]; available: text, csv, tensorboard, wandb"):
        check_loggers(["mlflow"])


def test_wandb_logs_offline_unless_configured(tmp_path, monkeypatch):
    from avalanche.evaluation.metric_results import AlternativeValues

    from ckd.benchmarking.loggers import close_loggers, make_loggers

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (logger,) = make_loggers(["wandb"], tmp_path, "digits")
    assert logger.wandb.run.settings.mode == "offline"
    logger.log_single_metric("Top1_Acc_Stream/eval_phase/test_stream/Task000", 0.5, 10)
    logger.log_single_metric("Top1_Acc_Stream/eval_phase/test_stream/Task000", AlternativeValues(0.75), 20)
    logger.log_single_metric("Top1_Acc_Stream/eval_phase/test_stream/Task000", 0.25, 30)
    assert logger.wandb.run.summary["Top1_Acc_Stream/eval_phase/test_stream/Task000"] == 0.75  # step 20 is written
    close_loggers([logger])
    assert len(list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))) == 1


@pytest.mark.parametrize("loader", ["tensor", "avalanche"])
def test_training_curves_are_logged_on_both_loaders(tmp_path, loader):
    config = RunConfig("split-digits", "kd-replay", epochs=2, n_experiences=2, max_train_per_experience=60,
                       loader=loader, method_args={"mem_size": 40})
    run_to_file(config, tmp_path, loggers=["csv", "text"])
    log_dir = tmp_path / "logs" / result_path(tmp_path, config).stem
    with open(log_dir / "csv" / "training_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["training_exp"]), int(r["epoch"])) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(0.0 <= float(r["training_accuracy"]) <= 1.0 and float(r["training_loss"]) > 0.0 for r in rows)
    assert float(rows[1]["training_accuracy"]) > float(rows[0]["training_accuracy"])  # the first experience is learned
    # The distillation term per epoch: none while the first experience trains (no teacher yet).
    assert [r["distillation_loss"] for r in rows[:2]] == ["", ""] and all(float(r["distillation_loss"]) > 0 for r in rows[2:])
    text = (log_dir / "log.txt").read_text()
    assert text.count("Top1_Acc_Epoch/train_phase/train_stream/Task000") == 4 and "Epoch 1 ended." in text
    assert text.count("KD_Loss_Epoch/train_phase/train_stream") == 2 and text.count("KD_Loss_Exp/train_phase") == 1
