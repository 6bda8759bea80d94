import json
import shutil
import subprocess
import sys

import matplotlib.image
import pytest

import ckd.benchmarking.runner as runner_module
from ckd.benchmarking.run_config import RunConfig, checkpoint_path, config_from_result, result_path
from ckd.benchmarking.runner import run, run_to_file
from ckd.benchmarking.suite import load_suite
from ckd.cli import main
from recording import interrupt_at

SUITE = """
[suite]
seeds = [0, 1]

[defaults]
stream = "split-digits"
epochs = 1

[[run]]
method = "naive"

[[run]]
method = "kd-replay"
label = "kd-replay@100"
[run.args]
mem_size = 100
"""


def test_same_seed_gives_the_same_numbers_and_other_seeds_differ():
    a = run(RunConfig("split-digits", "kd-replay", seed=3, epochs=1))
    b = run(RunConfig("split-digits", "kd-replay", seed=3, epochs=1))
    c = run(RunConfig("split-digits", "kd-replay", seed=4, epochs=1))
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
    assert a["accuracy_matrix"] != c["accuracy_matrix"]


def test_result_record_has_the_documented_fields():
    result = run(RunConfig("split-digits", "replay", seed=0, epochs=1, eval_every=20))
    for key in (
        "stream", "method", "seed", "config", "accuracy_matrix", "final_average_accuracy",
        "average_forgetting", "average_forgetting_avalanche", "bwt", "wall_time_s",
        "peak_cpu_memory_mb", "peak_cuda_memory_mb", "versions", "task_il_accuracy_matrix",
    ):
        assert key in result, key
    matrix = result["accuracy_matrix"]
    assert len(matrix) == 5 and all(len(row) == 5 for row in matrix)
    assert all(0.0 <= v <= 1.0 for row in matrix for v in row)
    assert result["final_average_accuracy"] == pytest.approx(sum(matrix[-1]) / 5)
    assert result["peak_cuda_memory_mb"] is None and result["peak_cpu_memory_mb"] > 0
    assert result["config"]["method_args"]["mem_size"] == 500  # defaults are recorded
    assert set(result["versions"]) >= {"ckd", "torch", "avalanche"}
    # Task-IL (logits masked to the experience's classes) is never below class-IL.
    assert all(t >= c for t, c in zip(result["task_il_accuracy_matrix"][-1], matrix[-1]))
    curve = result["curve"]
    assert curve["every"] == 20 and len(curve["iteration"]) == len(curve["accuracy"]) > 0
    json.dumps(result, allow_nan=False)


def test_joint_training_trains_once_on_the_whole_stream():
    # Three epochs: with two, seed 0 lands at 0.65 on the tensor path's data order (0.74-0.88 over seeds 2-7 on either loader).
    result = run(RunConfig("split-digits", "joint", seed=0, epochs=3))
    assert all(row == result["accuracy_matrix"][0] for row in result["accuracy_matrix"])
    assert result["final_average_accuracy"] > 0.8
    assert result["average_forgetting"] == 0.0


def test_run_config_validates_its_fields():
    with pytest.raises(ValueError, match="unknown stream 'split-cifar'"):
        RunConfig("split-cifar", "naive")
    with pytest.raises(ValueError, match="unknown method 'icarl'"):
        RunConfig("split-digits", "icarl")
    with pytest.raises(ValueError, match="method 'naive' has no setting 'mem_size'"):
        RunConfig("split-digits", "naive", method_args={"mem_size": 10})
    with pytest.raises(ValueError, match="lr must be > 0"):
        RunConfig("split-digits", "naive", lr=0.0)
    with pytest.raises(ValueError, match="mem_size must be an integer >= 1, got 0"):
        run(RunConfig("split-digits", "kd-replay", method_args={"mem_size": 0}))


def test_suite_resumes_without_rerunning_finished_runs(tmp_path, monkeypatch):
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    configs = load_suite(suite)
    assert [(c.name, c.seed) for c in configs] == [
        ("naive", 0), ("naive", 1), ("kd-replay@100", 0), ("kd-replay@100", 1)
    ]
    out = tmp_path / "results"
    assert main(["suite", str(suite), "--out", str(out), "--quiet"]) == 0
    files = sorted(out.glob("*.json"))
    assert len(files) == 4
    stamps = {f: f.stat().st_mtime_ns for f in files}

    calls = []
    monkeypatch.setattr(runner_module, "run", lambda *a, **k: calls.append(a) or pytest.fail("re-ran"))
    assert main(["suite", str(suite), "--out", str(out), "--quiet"]) == 0
    assert calls == [] and {f: f.stat().st_mtime_ns for f in files} == stamps

    # A changed setting is a different run: only that one runs again.
    suite.write_text(SUITE.replace("mem_size = 100", "mem_size = 60"))
    monkeypatch.undo()
    ran = []
    original = runner_module.run
    monkeypatch.setattr(runner_module, "run", lambda *a, **k: ran.append(a[0].name) or original(*a, **k))
    assert main(["suite", str(suite), "--out", str(out), "--quiet"]) == 0
    assert ran == ["kd-replay@100", "kd-replay@100"]


def test_an_interrupted_run_leaves_no_result_file(tmp_path, monkeypatch):
    interrupt_at(monkeypatch, 2)
    config = RunConfig("split-digits", "naive", epochs=1)
    with pytest.raises(KeyboardInterrupt):
        run_to_file(config, tmp_path)
    assert list(tmp_path.iterdir()) == [checkpoint_path(tmp_path, config)]  # what resumes it (tests/test_checkpoint.py)


def test_cli_run_summary_plot_and_from_result(tmp_path, capsys):
    out, figures = tmp_path / "results", tmp_path / "figures"
    assert main(["run", "--stream", "split-digits", "--method", "naive", "kd-replay", "--seeds", "0", "1",
                 "--epochs", "1", "--mem-size", "80", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| split-digits |" in printed and "kd-replay" in printed
    files = sorted(out.glob("*.json"))
    assert len(files) == 4
    result = json.loads((out / "split-digits__kd-replay__seed1.json").read_text())
    assert result["config"]["method_args"]["mem_size"] == 80

    assert main(["summary", str(out)]) == 0
    assert (out / "summary.md").read_text().count("split-digits") >= 2
    assert (out / "summary.csv").stat().st_size > 0

    assert main(["plot", str(out), "--out", str(figures)]) == 0
    pngs = sorted(figures.glob("*.png"))
    assert [p.name for p in pngs] == [
        "split-digits_accuracy_matrix.png", "split-digits_comparison.png", "split-digits_forgetting_curves.png"
    ]
    for png in pngs:
        height, width, _ = matplotlib.image.imread(png).shape
        assert width >= 600 and height >= 300

    only = tmp_path / "only"
    assert main(["plot", str(out), "--out", str(only), "--labels", "kd-*"]) == 0
    assert len(list(only.glob("*.png"))) == 3
    assert main(["plot", str(out), "--out", str(only), "--labels", "der*"]) == 2  # nothing matches

    rerun_dir = tmp_path / "rerun"
    assert main(["run", "--from-result", str(out / "split-digits__kd-replay__seed1.json"),
                 "--out", str(rerun_dir), "--quiet"]) == 0
    rerun = json.loads((rerun_dir / "split-digits__kd-replay__seed1.json").read_text())
    assert rerun["config"] == result["config"]
    assert rerun["accuracy_matrix"] == result["accuracy_matrix"]
    assert config_from_result(result) == config_from_result(rerun)


def test_cli_reports_missing_data_and_unknown_stream(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CKD_DATA_ROOT", raising=False)
    code = main(["run", "--stream", "split-mnist", "--method", "naive", "--data-root", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "train-images-idx3-ubyte.gz" in err and "CKD_DATA_ROOT" in err
    assert "Traceback" not in err and "failures.json" in err
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["failures.json"]  # no result file

    assert main(["run", "--stream", "split-cifar", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "unknown stream 'split-cifar'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.mnist
def test_cli_runs_split_mnist_from_the_data_root(tmp_path, mnist_root):
    out = tmp_path / "results"
    assert main(["run", "--stream", "split-mnist", "--method", "kd-replay", "--seeds", "0", "--mem-size", "200",
                 "--data-root", str(mnist_root), "--out", str(out), "--quiet",
                 "--set", "replay_batch_size=16"]) == 0
    result = json.loads(next(out.glob("*.json")).read_text())
    assert result["stream"] == "split-mnist" and len(result["accuracy_matrix"]) == 5
    assert result["final_average_accuracy"] > 0.6
    assert result["data_files"] == str((mnist_root / "MNIST" / "raw").resolve())


def test_cli_rejects_a_setting_no_method_has(tmp_path, capsys):
    code = main(["run", "--stream", "split-digits", "--method", "naive", "kd-replay", "--set", "tempreature=3",
                 "--out", str(tmp_path), "--quiet"])
    assert code == 2 and "tempreature" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_suite_with_parallel_jobs_writes_the_same_results_as_serial(tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE.replace("seeds = [0, 1]", "seeds = [0]"))
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert main(["suite", str(suite), "--out", str(serial), "--quiet"]) == 0
    assert main(["suite", str(suite), "--out", str(parallel), "--quiet", "--jobs", "2"]) == 0
    names = sorted(p.name for p in serial.glob("*.json"))
    assert names == sorted(p.name for p in parallel.glob("*.json")) and len(names) == 2
    for name in names:
        a, b = (json.loads((d / name).read_text()) for d in (serial, parallel))
        assert a["accuracy_matrix"] == b["accuracy_matrix"]


def test_kd_runs_record_teacher_diagnostics_per_experience():
    result = run(RunConfig("split-digits", "kd-replay", seed=0, epochs=1, method_args={"mem_size": 100}))
    records = result["diagnostics"]
    assert len(records) == 5 and records[0] is None  # no teacher during the first experience
    for r in records[1:]:
        assert set(r) == {"agreement", "kl", "teacher_accuracy", "teacher_correct_accuracy", "teacher_wrong_accuracy",
                          "ece_student", "ece_teacher", "buffer_agreement", "buffer_kl"}
        assert 0.0 <= r["agreement"] <= 1.0 and r["kl"] >= 0.0 and 0.0 <= r["ece_student"] <= 1.0
        assert 0.0 <= r["buffer_agreement"] <= 1.0 and r["buffer_kl"] >= 0.0
    # Held-out data of the experiences the teacher learned only: in class-IL it cannot
    # be right on the current classes, so with them its accuracy would be at most half.
    assert records[1]["teacher_accuracy"] > 0.6
    assert run(RunConfig("split-digits", "naive", seed=0, epochs=1))["diagnostics"] is None


def test_the_loader_is_part_of_the_config_and_older_results_read_as_avalanches():
    with pytest.raises(ValueError, match="loader must be one of"):
        RunConfig("split-digits", "naive", loader="numpy")
    tensor = RunConfig("split-digits", "naive", epochs=1)
    assert tensor.loader == "tensor" and tensor.resolved()["loader"] == "tensor"
    avalanche = RunConfig("split-digits", "naive", epochs=1, loader="avalanche")
    assert "loader" not in avalanche.resolved()  # as in results written before the tensor path
    old = {"config": avalanche.resolved()}
    assert config_from_result(old).loader == "avalanche"
    assert config_from_result({"config": tensor.resolved()}).loader == "tensor"
    a, b = run(tensor), run(avalanche)
    assert a["config"]["loader"] == "tensor" and "loader" not in b["config"]
    assert a["accuracy_matrix"] != b["accuracy_matrix"]  # another data order


@pytest.mark.parametrize("method", ["naive", "replay", "der", "kd-replay"])
def test_every_method_is_scored_with_the_ema_of_its_weights_and_with_the_trained_weights(method):
    """EMA scoring is the run's setting: it reads the weights, never changes training,
    so the trained weights of an EMA-scored run score what a run without it scores."""
    fields = dict(seed=1, epochs=1, max_train_per_experience=60)
    with_ema = run(RunConfig("split-digits", method, eval_ema_half_life=0.3, **fields))
    without = run(RunConfig("split-digits", method, eval_ema_half_life=0.0, **fields))
    assert with_ema["scored_model"] == "ema" and without["scored_model"] == "model"
    assert without["trained_weights"] is None
    trained = with_ema["trained_weights"]
    assert trained["accuracy_matrix"] == without["accuracy_matrix"]
    assert trained["task_il_accuracy_matrix"] == without["task_il_accuracy_matrix"]
    assert trained["final_average_accuracy"] == without["final_average_accuracy"]
    assert with_ema["accuracy_matrix"] != without["accuracy_matrix"]  # the average is another model
    assert with_ema["config"]["eval_ema_half_life"] == 0.3 and "eval_ema_half_life" not in without["config"]


def test_the_stream_sets_the_default_ema_half_life_and_bad_values_are_refused():
    assert RunConfig("split-digits", "naive").eval_ema_half_life == 0.3
    assert RunConfig("permuted-mnist", "naive").eval_ema_half_life == 1.0
    for bad in (-0.1, "0.3", True, float("inf")):
        with pytest.raises(ValueError, match="eval_ema_half_life must be a number >= 0"):
            RunConfig("split-digits", "naive", eval_ema_half_life=bad)


def test_a_result_written_with_ema_as_a_method_setting_is_kept(tmp_path):
    """Results written when EMA scoring was a kd-* method setting still count as done."""
    from ckd.benchmarking.run_config import has_result, result_path

    config = RunConfig("split-digits", "kd-replay", seed=0, epochs=1, eval_ema_half_life=0.3)
    old = json.loads(json.dumps(config.resolved()))
    del old["eval_ema_half_life"]
    old["method_args"]["eval_ema_half_life"] = 0.3
    path = result_path(tmp_path, config)
    path.write_text(json.dumps({"config": old, "accuracy_matrix": [[1.0]]}))
    assert has_result(tmp_path, config)
    assert not has_result(tmp_path, RunConfig("split-digits", "kd-replay", seed=0, epochs=1, eval_ema_half_life=0.0))
    assert config_from_result({"config": old}).resolved() == config.resolved()


def test_cli_eval_ema_and_no_augmentation_reach_the_config(tmp_path):
    out = tmp_path / "r"
    assert main(["run", "--stream", "split-digits", "--method", "naive", "--epochs", "1", "--eval-ema", "0",
                 "--no-augmentation", "--out", str(out), "--quiet"]) == 0
    result = json.loads(next(out.glob("*.json")).read_text())
    assert result["scored_model"] == "model" and result["trained_weights"] is None
    assert result["data_files"] is None  # scikit-learn's digits are built in memory
    assert "eval_ema_half_life" not in result["config"] and result["config"]["augmentation"] is False
    assert main(["run", "--stream", "split-digits", "--method", "naive", "--epochs", "1", "--eval-ema", "0.5",
                 "--out", str(tmp_path / "e"), "--quiet"]) == 0
    result = json.loads(next((tmp_path / "e").glob("*.json")).read_text())
    assert result["config"]["eval_ema_half_life"] == 0.5 and result["scored_model"] == "ema"


def test_augmentation_false_trains_without_the_streams_crop_and_flip(tmp_path, monkeypatch):
    import ckd.data.augmentation
    from archives import write_cifar10

    write_cifar10(tmp_path, train_per_class=4, test_per_class=1)
    calls = []
    original = ckd.data.augmentation.CropFlip.__call__
    monkeypatch.setattr(ckd.data.augmentation.CropFlip, "__call__", lambda self, x: calls.append(x.shape[0]) or original(self, x))
    fields = dict(model="cnn", epochs=1, batch_size=4, checksum=False, eval_ema_half_life=0.0)
    run(RunConfig("split-cifar10", "naive", augmentation=False, **fields), data_root=tmp_path)
    assert calls == []
    run(RunConfig("split-cifar10", "naive", **fields), data_root=tmp_path)
    assert len(calls) == 10  # two minibatches of 4 per experience, five experiences


FINISHING_ELSEWHERE = """
import shutil, sys, time
from ckd.common.files import held_lock
with held_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(1.0)
    shutil.copy(sys.argv[2], sys.argv[3])  # the other process writes the result, then lets go
"""


@pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks on Windows")
def test_a_run_another_process_is_running_is_waited_for_and_its_result_kept(tmp_path, capsys):
    config = RunConfig("split-digits", "naive", max_train_per_experience=40)
    out = tmp_path / "out"
    path, ran = run_to_file(config, out)
    assert ran and not path.with_suffix(".lock").exists()
    saved = tmp_path / "saved.json"
    shutil.move(path, saved)
    other = subprocess.Popen([sys.executable, "-c", FINISHING_ELSEWHERE, str(path.with_suffix(".lock")), str(saved),
                              str(path)], stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "held"
    try:
        kept, ran = run_to_file(config, out)
    finally:
        other.wait()
    assert kept == path == result_path(out, config) and not ran  # not run twice
    assert kept.read_bytes() == saved.read_bytes()
    assert "waiting for split-digits__naive__seed0.json: another process is running it" in capsys.readouterr().err
