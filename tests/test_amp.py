"""Tests for ``ckd.engines.amp``: autocast forward, float32 losses, fp16 loss scaling; the runner's ``amp``."""

from __future__ import annotations

import json
import time

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from torch import nn

from ckd.benchmarking.run_config import RunConfig, config_from_result
from ckd.benchmarking.runner import run
from ckd.data.streams import make_stream
from ckd.engines.amp import MixedPrecisionPlugin


class _Probe(nn.Module):
    """Records the dtype of what flows through it."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def forward(self, x):
        self.dtypes.append(x.dtype)
        return x


class _Recorder(SupervisedPlugin):
    def __init__(self) -> None:
        super().__init__()
        self.output_dtypes, self.loss_dtypes = [], []

    def after_forward(self, strategy, **kwargs):
        self.output_dtypes.append(strategy.mb_output.dtype)

    def before_backward(self, strategy, **kwargs):
        self.loss_dtypes.append(strategy.loss.dtype)


class _InfiniteLoss(SupervisedPlugin):
    """Adds a term whose gradient is infinite: a scaled step must be skipped."""

    def before_backward(self, strategy, **kwargs):
        weight = next(strategy.model.parameters())
        strategy.loss = strategy.loss + weight.sum() * float("inf")


def _strategy(model, plugins, epochs=1):
    return Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=nn.CrossEntropyLoss(),
        train_mb_size=32, train_epochs=epochs, eval_mb_size=256, device="cpu",
        evaluator=EvaluationPlugin(loggers=[]), plugins=plugins,
    )


@pytest.fixture(scope="module")
def digits():
    return make_stream("split-digits", seed=0, max_train_per_experience=64)


def test_bf16_runs_the_forward_in_bf16_and_the_losses_in_float32(digits):
    torch.manual_seed(0)
    probe = _Probe()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), probe, nn.ReLU(), nn.Linear(32, 10))
    recorder = _Recorder()
    strategy = _strategy(model, [MixedPrecisionPlugin("bf16", "cpu"), recorder])
    before = [p.detach().clone() for p in model.parameters()]
    strategy.train(digits.benchmark.train_stream[0])
    assert set(probe.dtypes) == {torch.bfloat16}
    assert set(recorder.output_dtypes) == {torch.float32} and set(recorder.loss_dtypes) == {torch.float32}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # evaluation runs in float32
    probe.dtypes.clear()
    strategy.eval(digits.benchmark.test_stream[:1])
    assert set(probe.dtypes) == {torch.float32}


def test_fp16_scales_the_loss_and_skips_a_step_with_infinite_gradients(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    amp = MixedPrecisionPlugin("fp16", "cpu")
    strategy = _strategy(model, [amp, _InfiniteLoss()])
    before = [p.detach().clone() for p in model.parameters()]
    strategy.train(digits.benchmark.train_stream[0])
    steps = -(-len(digits.benchmark.train_stream[0].dataset) // 32)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # every step skipped, no NaN written
    assert amp.scaler.get_scale() == 65536.0 * 0.5**steps  # halved once per overflowing step

    healthy = MixedPrecisionPlugin("fp16", "cpu")
    strategy = _strategy(model, [healthy])
    strategy.train(digits.benchmark.train_stream[0])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert healthy.scaler.get_scale() == 65536.0  # no overflow, no growth before 2000 steps


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="dtype"):
        MixedPrecisionPlugin("fp8")
    with pytest.raises(ValueError, match="amp"):
        RunConfig(stream="split-digits", method="naive", amp="float16")


def test_runner_records_amp_only_when_set():
    base = RunConfig(stream="split-digits", method="naive", epochs=1, max_train_per_experience=40)
    assert "amp" not in base.resolved() and "checksum" not in base.resolved()
    result = run(RunConfig(stream="split-digits", method="kd-replay", epochs=1, max_train_per_experience=40, amp="bf16"))
    assert result["config"]["amp"] == "bf16"
    assert config_from_result(result).amp == "bf16"
    assert 0.0 <= result["final_average_accuracy"] <= 1.0 and not result["diverged"]


@pytest.mark.parametrize("teachers", [False, True])
def test_teachers_run_under_autocast_only_when_asked(digits, teachers):
    """kd-replay with the EMA teacher on every row: two teacher passes per step (the replayed
    rows, the incoming ones), in inference mode; under bf16 only with ``teachers=True``."""
    from ckd.benchmarking.methods import TrainSettings, make_strategy, resolve_method_args

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    seen = []  # (rows, training, inference mode, bf16 autocast) of every pass, the teachers' copies included
    model[1].register_forward_pre_hook(lambda module, args: seen.append(
        (args[0].shape[0], module.training, torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cpu"))))
    recorder = _Recorder()
    args = resolve_method_args("kd-replay", {"mem_size": 40, "replay_batch_size": 8, "teacher": "ema",
                                             "current_alpha": 0.3, "current_known_classes_only": False})
    amp = MixedPrecisionPlugin("bf16", "cpu", teachers=teachers)
    strategy = make_strategy("kd-replay", model, TrainSettings(0.05, 16, 1, 100, "cpu"), args, seed=0,
                             extra_plugins=[amp, recorder], fast=True)
    for experience in digits.benchmark.train_stream[:2]:
        strategy.train(experience)
    teacher_passes = [s for s in seen if s[2]]
    student_passes = [s for s in seen if s[1]]
    assert {rows for rows, *_ in teacher_passes} == {8, 16}  # replayed rows and incoming rows
    assert all(not training for _, training, _, _ in teacher_passes)
    assert all(autocast == teachers for *_, autocast in teacher_passes)
    assert student_passes and all(autocast for *_, autocast in student_passes)
    assert set(recorder.loss_dtypes) == {torch.float32}
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_amp_teachers_follow_amp_for_kd_methods_and_old_results_read_as_float32(tmp_path):
    from ckd.benchmarking.run_config import has_result, result_path
    from ckd.cli import main

    assert MixedPrecisionPlugin("bf16", "cpu").teachers is True
    kd = RunConfig(stream="split-digits", method="kd-replay", amp="bf16")
    assert kd.teachers_under_amp is True and kd.resolved()["amp_teachers"] is True
    assert RunConfig(stream="split-digits", method="kd-replay").teachers_under_amp is False
    assert "amp_teachers" not in RunConfig(stream="split-digits", method="kd-replay").resolved()
    assert "amp_teachers" not in RunConfig(stream="split-digits", method="replay", amp="bf16").resolved()
    with pytest.raises(ValueError, match="amp_teachers .*set amp"):
        RunConfig(stream="split-digits", method="kd-replay", amp_teachers=True)
    with pytest.raises(ValueError, match="amp_teachers must be true or false"):
        RunConfig(stream="split-digits", method="kd-replay", amp="bf16", amp_teachers="yes")
    with pytest.raises(ValueError, match="teachers must be true or false"):
        MixedPrecisionPlugin("bf16", "cpu", teachers=1)
    # A result written before the setting existed ran its teachers in float32: a row pinned so keeps it.
    old = json.loads(json.dumps(kd.resolved()))
    del old["amp_teachers"]
    assert config_from_result({"config": old}).teachers_under_amp is False
    pinned = RunConfig(stream="split-digits", method="kd-replay", amp="bf16", amp_teachers=False)
    result_path(tmp_path, pinned).write_text(json.dumps({"config": old, "accuracy_matrix": [[1.0]]}))
    assert has_result(tmp_path, pinned) and not has_result(tmp_path, kd)
    for flags, expected in (([], True), (["--no-amp-teachers"], False)):
        out = tmp_path / f"r{len(flags)}"
        assert main(["run", "--stream", "split-digits", "--method", "kd-replay", "--epochs", "1", "--max-train", "40",
                     "--amp", "bf16", *flags, "--out", str(out), "--quiet"]) == 0
        result = json.loads(next(out.glob("*.json")).read_text())
        assert result["config"]["amp_teachers"] is expected and config_from_result(result).teachers_under_amp is expected
    # A suite given --amp: its kd-* rows' teachers follow, unless a row says otherwise.
    suite = tmp_path / "suite.toml"
    suite.write_text('[suite]\nseeds = [0]\n[defaults]\nstream = "split-digits"\nepochs = 1\n'
                     'max_train_per_experience = 40\n[[run]]\nmethod = "kd-replay"\n'
                     '[[run]]\nmethod = "kd-replay"\nlabel = "fp32-teachers"\namp_teachers = false\n')
    assert main(["suite", str(suite), "--amp", "bf16", "--out", str(tmp_path / "s1"), "--quiet"]) == 0
    assert main(["suite", str(suite), "--amp", "bf16", "--no-amp-teachers", "--out", str(tmp_path / "s2"), "--quiet"]) == 0
    teachers = {(p.parent.name, json.loads(p.read_text())["config"]["label"]): json.loads(p.read_text())["config"]["amp_teachers"]
                for p in tmp_path.glob("s?/*.json")}
    assert teachers == {("s1", "kd-replay"): True, ("s1", "fp32-teachers"): False,
                        ("s2", "kd-replay"): False, ("s2", "fp32-teachers"): False}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_time_one_seq_cifar10_epoch_with_and_without_amp(tmp_path):
    """One epoch of each Seq-CIFAR-10 experience (ResNet-18, batch 32, DER++@500) on
    synthetic archives of 1,000 training images per class, in float32, bf16 and fp16."""
    from archives import write_cifar10

    write_cifar10(tmp_path, train_per_class=1000, test_per_class=10)
    timings = {}
    for amp in (None, "bf16", "fp16"):
        config = RunConfig(
            stream="split-cifar10", method="der", epochs=1, device="cuda", checksum=False, amp=amp,
            method_args={"mem_size": 500, "replay_batch_size": 32, "alpha": 0.2, "beta": 0.5},
        )
        start = time.perf_counter()
        result = run(config, data_root=tmp_path)
        timings[amp or "fp32"] = (time.perf_counter() - start, sum(result["wall_time_per_experience_s"]))
        assert not result["diverged"]
    print("seq-cifar10 epoch (total s, training s):", timings, torch.cuda.get_device_name())
