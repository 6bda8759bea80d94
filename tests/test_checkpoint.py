"""Checkpoints: a killed run resumes where its last checkpoint left it and ends with the
numbers of an uninterrupted run; Avalanche's save_checkpoint round-trips ckd's plugins."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ckd.benchmarking.checkpoint import epoch_checkpoint_path, read_checkpoint
from ckd.benchmarking.run_config import RunConfig, checkpoint_path, config_from_result, result_path
from ckd.benchmarking.runner import run, run_to_file
from ckd.data.streams import make_stream
from recording import interrupt_at, interrupt_inside

SMALL = {"max_train_per_experience": 150}

RUN_SCRIPT = """
import json, sys
from ckd.benchmarking.runner import RunConfig, run_to_file
run_to_file(RunConfig(**json.loads(sys.argv[1])), sys.argv[2])
"""


@pytest.mark.slow
@pytest.mark.parametrize("method, args", [("kd-replay", {"mem_size": 60}), ("replay", {"mem_size": 60})])
def test_a_run_killed_after_its_first_checkpoint_resumes_to_the_uninterrupted_numbers(tmp_path, method, args):
    config = RunConfig("split-digits", method, method_args=args, **SMALL)
    ckpt = checkpoint_path(tmp_path, config)
    settings = json.dumps({"stream": "split-digits", "method": method, "method_args": args, **SMALL})
    process = subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, settings, str(tmp_path)])
    try:
        deadline = time.monotonic() + 300
        while not ckpt.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert ckpt.exists() and not result_path(tmp_path, config).exists(), "the run ended before it could be killed"

    path, ran = run_to_file(config, tmp_path)
    resumed = json.loads(path.read_text())
    assert ran and resumed["resumed_at_experiences"] and resumed["resumed_at_experiences"][0] >= 1
    assert not ckpt.exists()  # removed once the result is written
    uninterrupted = run(config_from_result(resumed))
    assert resumed["accuracy_matrix"] == uninterrupted["accuracy_matrix"]
    assert resumed["trained_weights"] == uninterrupted["trained_weights"] is not None
    assert resumed["task_il_accuracy_matrix"] == uninterrupted["task_il_accuracy_matrix"]
    assert resumed["diagnostics"] == uninterrupted["diagnostics"]


@pytest.mark.parametrize("method, args", [
    ("der-authors", {"mem_size": 40}), ("der", {"mem_size": 40}), ("er-ace", {"mem_size": 40}),
    ("kd-ema", {"mem_size": 40}), ("kd-replay-cached", {"mem_size": 40}),
    ("kd-multi-teacher", {"mem_size": 40, "n_teachers": 2}), ("kd-feature", {"mem_size": 40}),
    ("kd-replay-lwf", {"mem_size": 40, "weight_aligning": True}), ("kd-lwf", {}), ("naive", {}),
])
def test_every_checkpointed_method_resumes_to_the_uninterrupted_numbers(tmp_path, monkeypatch, method, args):
    config = RunConfig("split-digits", method, epochs=1, eval_every=7, method_args=args, **SMALL)
    uninterrupted = run(config)
    interrupt_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run(config, checkpoint=tmp_path / "run.ckpt")
    monkeypatch.undo()
    resumed = run(config, checkpoint=tmp_path / "run.ckpt")
    assert resumed["resumed_at_experiences"] == [3]
    for key in ("accuracy_matrix", "trained_weights", "curve", "diagnostics", "diverged_at_experience"):
        assert resumed[key] == uninterrupted[key], key
    assert len(resumed["wall_time_per_experience_s"]) == 5


@pytest.mark.slow
def test_a_run_killed_between_two_epochs_resumes_to_the_uninterrupted_numbers(tmp_path):
    args = {"mem_size": 60}
    config = RunConfig("split-digits", "kd-replay", epochs=3, method_args=args, **SMALL)
    inside = epoch_checkpoint_path(checkpoint_path(tmp_path, config))
    settings = json.dumps({"stream": "split-digits", "method": "kd-replay", "epochs": 3, "method_args": args, **SMALL})
    env = {**os.environ, "CKD_CHECKPOINT_MINUTES": "0"}  # a save at the start of every epoch but the first
    process = subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, settings, str(tmp_path)], env=env)
    try:
        deadline = time.monotonic() + 300
        while not inside.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(float(torch.rand(()) * 0.5))  # somewhere after it, in an epoch
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert not result_path(tmp_path, config).exists(), "the run ended before it could be killed"

    path, ran = run_to_file(config, tmp_path)
    resumed = json.loads(path.read_text())
    assert ran and resumed["resumed_at_experiences"]
    assert not inside.exists() and not checkpoint_path(tmp_path, config).exists()
    uninterrupted = run(config_from_result(resumed))
    for key in ("accuracy_matrix", "trained_weights", "task_il_accuracy_matrix", "diagnostics"):
        assert resumed[key] == uninterrupted[key], key


@pytest.mark.parametrize("method, args", [
    ("kd-replay", {"mem_size": 40}), ("kd-ema", {"mem_size": 40}), ("der-authors", {"mem_size": 40}),
    ("er-ace", {"mem_size": 40}), ("replay", {"mem_size": 40}), ("kd-feature", {"mem_size": 40}),
    ("kd-lwf", {}), ("naive", {}),
])
def test_a_run_stopped_between_two_epochs_resumes_there_to_the_uninterrupted_numbers(tmp_path, monkeypatch,
                                                                                     method, args):
    config = RunConfig("split-digits", method, epochs=3, eval_every=7, eval_ema_half_life=0.3, method_args=args,
                       **SMALL)
    uninterrupted = run(config)
    ckpt = _stopped_inside(monkeypatch, config, tmp_path / "run.ckpt", epoch=2, every_s=0)  # saves every epoch but the first
    train_stream = make_stream("split-digits", seed=0, **SMALL).benchmark.train_stream
    saved = read_checkpoint(epoch_checkpoint_path(ckpt), train_stream)["state"]
    assert (saved["experience"], saved["epochs"]) == (2, 2)
    assert read_checkpoint(ckpt, train_stream)["state"]["experiences"] == 2

    resumed = run(config, checkpoint=ckpt, checkpoint_every_s=0)
    assert resumed["resumed_at_experiences"] == [2]
    for key in ("accuracy_matrix", "trained_weights", "curve", "diagnostics", "diverged_at_experience"):
        assert resumed[key] == uninterrupted[key], key


def test_avalanche_der_resumes_between_experiences_only(tmp_path, monkeypatch):
    config = RunConfig("split-digits", "der", epochs=2, method_args={"mem_size": 40}, **SMALL)
    ckpt = _stopped_inside(monkeypatch, config, tmp_path / "run.ckpt", epoch=1, every_s=0)
    assert ckpt.exists() and not epoch_checkpoint_path(ckpt).exists()
    resumed = run(config, checkpoint=ckpt, checkpoint_every_s=0)
    assert resumed["resumed_at_experiences"] == [2]
    assert resumed["accuracy_matrix"] == run(config)["accuracy_matrix"]


def test_no_save_between_epochs_before_the_interval_has_passed(tmp_path, monkeypatch):
    config = RunConfig("split-digits", "kd-replay", epochs=3, method_args={"mem_size": 40}, **SMALL)
    ckpt = _stopped_inside(monkeypatch, config, tmp_path / "run.ckpt", epoch=2, every_s=3600)
    assert ckpt.exists() and not epoch_checkpoint_path(ckpt).exists()
    path, _ = run_to_file(config, tmp_path)  # another file: starts over, and leaves no checkpoint behind
    assert not checkpoint_path(tmp_path, config).exists()
    assert not epoch_checkpoint_path(checkpoint_path(tmp_path, config)).exists()


@pytest.mark.parametrize("minutes", ["ten", "-1", "nan", "inf"])
def test_a_bad_checkpoint_interval_is_refused_in_one_line_before_training(tmp_path, monkeypatch, minutes):
    config = RunConfig("split-digits", "kd-replay", epochs=2, method_args={"mem_size": 40}, **SMALL)
    monkeypatch.setenv("CKD_CHECKPOINT_MINUTES", minutes)
    with pytest.raises(ValueError, match=f"^CKD_CHECKPOINT_MINUTES must be a number of minutes >= 0, got '{minutes}'$"):
        run_to_file(config, tmp_path)
    assert list(tmp_path.iterdir()) == []  # no result, no checkpoint
    monkeypatch.delenv("CKD_CHECKPOINT_MINUTES")
    with pytest.raises(ValueError, match="checkpoint interval must be a number of seconds >= 0, got -5"):
        run(config, checkpoint=tmp_path / "run.ckpt", checkpoint_every_s=-5)


def _stopped_inside(monkeypatch, config, ckpt: Path, *, epoch: int, every_s: float) -> Path:
    """Run ``config`` with its checkpoint at ``ckpt``, stopped inside epoch ``epoch`` of experience 2."""
    interrupt_inside(monkeypatch, experience=2, epoch=epoch)
    with pytest.raises(KeyboardInterrupt):
        run(config, checkpoint=ckpt, checkpoint_every_s=every_s)
    monkeypatch.undo()
    return ckpt


def test_methods_that_cannot_checkpoint_run_from_the_start_and_finish(tmp_path, monkeypatch):
    for method in ("lwf", "ewc"):
        config, out = RunConfig("split-digits", method, epochs=1, **SMALL), tmp_path / method
        interrupt_at(monkeypatch, 2)
        with pytest.raises(KeyboardInterrupt):
            run_to_file(config, out)
        monkeypatch.undo()
        assert not out.exists()  # no checkpoint, no result
        path, _ = run_to_file(config, out)
        result = json.loads(path.read_text())
        assert result["resumed_at_experiences"] == []
        assert result["accuracy_matrix"] == run(config)["accuracy_matrix"]


def test_a_checkpoint_of_other_settings_is_ignored_and_replaced(tmp_path, monkeypatch):
    first = RunConfig("split-digits", "kd-replay", epochs=1, method_args={"mem_size": 40}, **SMALL)
    second = RunConfig("split-digits", "kd-replay", epochs=1, method_args={"mem_size": 50}, **SMALL)
    ckpt = checkpoint_path(tmp_path, first)
    assert ckpt == checkpoint_path(tmp_path, second)  # same label, same file
    interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_to_file(first, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_to_file(second, tmp_path)  # starts over, then writes its own checkpoint
    monkeypatch.undo()
    from ckd.data.streams import make_stream

    saved = read_checkpoint(ckpt, make_stream("split-digits", seed=0, **SMALL).benchmark.train_stream)
    assert saved["key"]["config"]["method_args"]["mem_size"] == 50 and saved["state"]["experiences"] == 2
    path, _ = run_to_file(second, tmp_path)
    result = json.loads(path.read_text())
    assert result["resumed_at_experiences"] == [2]
    assert result["accuracy_matrix"] == run(second)["accuracy_matrix"]


def test_an_unreadable_checkpoint_is_ignored(tmp_path):
    config = RunConfig("split-digits", "naive", epochs=1, **SMALL)
    ckpt = checkpoint_path(tmp_path, config)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="cannot be read"):
        path, _ = run_to_file(config, tmp_path)
    assert json.loads(path.read_text())["resumed_at_experiences"] == [] and not ckpt.exists()


# ----------------------------------------------------------- Avalanche's own checkpoints
# A user's script: Avalanche's strategy and checkpoints, ckd's plugins, SGD with momentum.
USER_SCRIPT = r"""
import json, sys
import torch
from torch import nn
from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from ckd.data.streams import make_stream

sys.path.insert(0, {tests!r})
from test_checkpoint import plugin_set

benchmark = make_stream("split-digits", seed=0, max_train_per_experience=100).benchmark
stop_after, folder = {stop_after!r}, {folder!r}
rows = {{}}
for name in {names!r}:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    strategy = Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        criterion=nn.CrossEntropyLoss(), train_mb_size=10, train_epochs=1, eval_mb_size=500,
        plugins=plugin_set(name), evaluator=EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[]),
    )
    fname = f"{{folder}}/{{name}}.pkl"
    strategy, start = maybe_load_checkpoint(strategy, fname)
    rows[name] = []
    for experience in benchmark.train_stream[start:]:
        strategy.train(experience)
        metrics = strategy.eval(benchmark.test_stream)
        rows[name].append([metrics[k] for k in sorted(metrics) if k.startswith("Top1_Acc_Exp")])
        save_checkpoint(strategy, fname)
        if experience.current_experience + 1 == stop_after:
            break
print("ROWS" + json.dumps(rows))
"""


def plugin_set(name: str) -> list:
    """The ckd plugins of a user's strategy, by name (every teacher kind and every part)."""
    from ckd.distillation.parts.current_data import AsymmetricCrossEntropyPlugin, CurrentDistillationPlugin
    from ckd.distillation.parts.feature_distillation import FeatureDistillationPlugin, RelationDistillationPlugin
    from ckd.distillation.parts.logit_matching import LogitMatchingPlugin
    from ckd.distillation.parts.weight_aligning import WeightAligningPlugin
    from ckd.distillation.parts.weight_averaging import EMAEvaluationPlugin
    from ckd.distillation.plugin import KDReplayPlugin
    from ckd.distillation.replay import DarkExperienceReplayPlugin, ERACEPlugin, OnlineReplayPlugin
    from ckd.distillation.teachers import EnsembleTeacher

    if name in ("snapshot", "cached", "own", "ema"):
        return [KDReplayPlugin(mem_size=80, teacher=name, policy="reservoir", beta=0.5), EMAEvaluationPlugin()]
    if name == "ensemble":
        return [KDReplayPlugin(mem_size=80, teacher=EnsembleTeacher(n_teachers=2, ensemble="average"))]
    if name == "parts":
        kd = KDReplayPlugin(mem_size=80)
        return [WeightAligningPlugin(), kd, FeatureDistillationPlugin(kd), RelationDistillationPlugin(kd, weight=0.1),
                LogitMatchingPlugin(kd, weight=0.5), AsymmetricCrossEntropyPlugin(),
                CurrentDistillationPlugin(alpha=0.5, kd=kd), EMAEvaluationPlugin(update_probability=0.5)]
    if name == "lwf":
        return [CurrentDistillationPlugin()]
    if name == "wrappers":  # plugins that wrap the strategy's forward, as --amp and the image streams add them
        from ckd.data.augmentation import CropFlip
        from ckd.engines.amp import MixedPrecisionPlugin
        from ckd.engines.augmentation import AugmentationPlugin

        return [MixedPrecisionPlugin("bf16", "cpu"), AugmentationPlugin(CropFlip(padding=1)), KDReplayPlugin(mem_size=80)]
    return {"er-ace": [ERACEPlugin(mem_size=80)], "der": [DarkExperienceReplayPlugin(mem_size=80)],
            "online-er": [OnlineReplayPlugin(mem_size=80)]}[name]


PLUGIN_SETS = ("snapshot", "cached", "own", "ema", "ensemble", "parts", "lwf", "er-ace", "der", "online-er", "wrappers")


def _user_script(folder: Path, names, stop_after=None) -> dict:
    code = USER_SCRIPT.format(tests=str(Path(__file__).parent), stop_after=stop_after, folder=str(folder),
                              names=list(names))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.split("ROWS", 1)[1])


@pytest.mark.slow
def test_avalanche_checkpoints_of_ckd_plugins_resume_in_a_new_process_as_if_uninterrupted(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "resumed").mkdir()
    full = _user_script(tmp_path / "full", PLUGIN_SETS)
    first = _user_script(tmp_path / "resumed", PLUGIN_SETS, stop_after=2)  # experiences 0 and 1, then stop
    rest = _user_script(tmp_path / "resumed", PLUGIN_SETS)  # loads the checkpoint: experiences 2 to 4
    for name in PLUGIN_SETS:
        assert len(first[name]) == 2 and len(rest[name]) == 3, name
        assert first[name] + rest[name] == full[name], name


def test_save_checkpoint_keeps_the_optimizer_momentum(tmp_path, digits_stream):
    from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin
    from torch import nn

    def strategy():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                     train_mb_size=10, train_epochs=1, plugins=plugin_set("snapshot"),
                     evaluator=EvaluationPlugin(loggers=[]))

    trained = strategy()
    trained.train(digits_stream.benchmark.train_stream[0])
    save_checkpoint(trained, tmp_path / "ck.pkl")
    loaded, start = maybe_load_checkpoint(strategy(), tmp_path / "ck.pkl")
    assert start == 1
    momentum = [s["momentum_buffer"] for s in loaded.optimizer.state.values()]
    expected = [s["momentum_buffer"] for s in trained.optimizer.state.values()]
    assert len(momentum) == 2 and all(torch.equal(a, b) for a, b in zip(momentum, expected))
    assert all(any(p is q for q in loaded.optimizer.param_groups[0]["params"]) for p in loaded.model.parameters())


@pytest.fixture(scope="module")
def digits_stream():
    from ckd.data.streams import make_stream

    return make_stream("split-digits", seed=0)
