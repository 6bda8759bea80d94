"""No training step of any method waits for the device.

Every training iteration after the first experience has ended (teacher, buffer
and cached logits active) runs with the host-sync calls patched to raise
(``host_sync.forbid_host_syncs``): the guard is armed by a plugin placed first
in ``strategy.plugins`` at ``before_training_iteration`` and disarmed by one placed
last at ``after_training_iteration``, so it covers every plugin's hooks, the
forward, the backward and the optimizer step. On a GPU the same runs under
``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.models.dynamic_modules import MultiTaskModule
from torch import nn

from ckd.benchmarking.methods import (
    METHOD_DEFAULTS,
    TrainSettings,
    available_methods,
    make_strategy,
    resolve_method_args,
)
from ckd.data.models import mlp
from ckd.data.streams import make_stream
from host_sync import HostSyncError, forbid_host_syncs

# Syncs inside Avalanche's own code, which ckd cannot remove, on Avalanche's loader
# (loader="avalanche"); these methods are checked to still sync there (strict xfail),
# so that the day Avalanche stops, the exception is dropped. The tensor path replaces
# them (ckd.engines.training.TensorDER) and is checked like every other method.
AVALANCHE_SYNCS = {
    "der": "Avalanche's DER draws its replay batch inside before_forward from a CPU DataLoader "
           "(RandomSampler calls randperm(...).tolist(), then a host-to-device copy)",
}

# Syncs on CUDA only (a host-to-device copy each step), inside Avalanche's code, on either loader.
AVALANCHE_CUDA_SYNCS = {
    "ewc": "Avalanche's EWC (plugins/ewc.py) starts its penalty as torch.tensor(0).to(device)",
    "lwf": "Avalanche's LwF (regularization.py) indexes the logits with a Python list of classes",
}


class _Guard:
    def __init__(self, armed_from_experience: int, context=forbid_host_syncs) -> None:
        self.armed_from = armed_from_experience
        self.make_context = context
        self._context = None
        self.iterations = 0

    def arm(self, strategy) -> None:
        if self._context is None and strategy.clock.train_exp_counter >= self.armed_from:
            self._context = self.make_context()
            self._context.__enter__()

    def disarm(self) -> None:
        if self._context is not None:
            context, self._context = self._context, None
            context.__exit__(None, None, None)
            self.iterations += 1


class _Arm(SupervisedPlugin):
    def __init__(self, guard: _Guard) -> None:
        super().__init__()
        self.guard = guard

    def before_training_iteration(self, strategy, **kwargs) -> None:
        self.guard.arm(strategy)


class _Disarm(SupervisedPlugin):
    def __init__(self, guard: _Guard) -> None:
        super().__init__()
        self.guard = guard

    def after_training_iteration(self, strategy, **kwargs) -> None:
        self.guard.disarm()


class SyncFreeHeads(MultiTaskModule):
    """A multi-head MLP whose forward never syncs: every head runs, each row keeps
    its own task's (Avalanche's ``MultiTaskModule.forward`` reads the task labels on the host)."""

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, n_tasks: int, hidden: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU())
        self.heads = nn.Parameter(torch.randn(n_tasks, n_classes, hidden) * 0.1)

    def forward(self, x: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        every_head = torch.einsum("bh,tch->btc", h, self.heads)
        return every_head[torch.arange(x.shape[0], device=x.device), task_labels]


def _train_guarded(
    method: str, overrides: dict | None = None, task_labels: bool = False, model=None,
    device: str = "cpu", context=forbid_host_syncs, fast: bool = False, setup=None,
) -> int:
    """Train ``method`` on three experiences of split-digits, guarding every iteration
    from the second experience on (``joint``: every iteration); ``setup(strategy)`` runs
    before training. Returns how many iterations were guarded."""
    torch.manual_seed(0)
    stream = make_stream("split-digits", seed=0, task_labels=task_labels, max_train_per_experience=60)
    model = model or mlp(stream.input_shape, stream.n_classes)
    settings = TrainSettings(lr=0.05, batch_size=10, epochs=1, eval_batch_size=100, device=device)
    args = resolve_method_args(method, overrides)
    if "mem_size" in args:
        args["mem_size"] = 40
    guard = _Guard(armed_from_experience=0 if method == "joint" else 1, context=context)
    strategy = make_strategy(method, model, settings, args, fast=fast)
    if setup is not None:
        setup(strategy)
    strategy.plugins.insert(0, _Arm(guard))
    strategy.plugins.append(_Disarm(guard))  # after Avalanche's evaluator and clock
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if method == "joint":
                strategy.train(stream.benchmark.train_stream[:3])
            else:
                for experience in stream.benchmark.train_stream[:3]:
                    strategy.train(experience)
    finally:
        guard.disarm()
    return guard.iterations


def _method_params():
    for method in available_methods():
        for loader in ("tensor", "avalanche"):
            marks = []
            if loader == "avalanche" and method in AVALANCHE_SYNCS:
                marks.append(pytest.mark.xfail(raises=HostSyncError, strict=True, reason=AVALANCHE_SYNCS[method]))
            yield pytest.param(method, loader, marks=marks, id=f"{method}-{loader}")


@pytest.mark.parametrize("method,loader", list(_method_params()))
def test_no_training_iteration_of_any_method_syncs(method, loader):
    assert _train_guarded(method, fast=loader == "tensor") >= 10


@pytest.mark.parametrize("method,args", [
    ("naive", {}), ("replay", {}), ("kd-replay", {}), ("kd-replay", {"policy": "class_balanced", "known_classes_only": True}),
    ("kd-replay-cached", {}), ("kd-ema", {}),
])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_no_vectorized_step_syncs(method, args, device, monkeypatch):
    """Each step of the vectorized pass (``ckd.engines.vectorized._step``, then the buffers'
    insertion and the EMAs' update) from the second experience on."""
    import ckd.engines.stacked_kd as stacked_kd
    import ckd.engines.vectorized as vectorized
    from ckd.benchmarking.run_config import RunConfig
    from ckd.benchmarking.vectorized_runs import VectorizedTraining

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    context = forbid_host_syncs if device == "cpu" else _cuda_sync_errors
    configs = [RunConfig("split-digits", method, seed=s, epochs=1, max_train_per_experience=60, device=device,
                         method_args={**args, **({"mem_size": 40} if method != "naive" else {})})
               for s in (0, 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        training = VectorizedTraining(configs)
    training.train_experience(0)
    guarded = []

    def guard(function):
        def run(*a, **k):
            with context():
                out = function(*a, **k)
            guarded.append(function.__name__)
            return out
        return run

    monkeypatch.setattr(vectorized, "_step", guard(vectorized._step))
    monkeypatch.setattr(stacked_kd.StackedKD, "after_iteration", guard(stacked_kd.StackedKD.after_iteration))
    monkeypatch.setattr(stacked_kd.StackedEMA, "update", guard(stacked_kd.StackedEMA.update))
    training.train_experience(1)
    assert guarded.count("_step") >= 6


def test_current_classes_only_does_not_sync():
    if "current_classes_only" not in METHOD_DEFAULTS["kd-replay"]:
        pytest.skip("kd-replay has no current_classes_only setting any more (see the ER-ACE method)")
    assert _train_guarded("kd-replay", {"current_classes_only": True}) >= 10


@pytest.mark.parametrize("loader", ["tensor", "avalanche"])
def test_kd_replay_with_the_distillation_loss_metric_does_not_sync(loader):
    """The metric sums each step's term on the device and reads the sum at the epoch's end."""
    from ckd.distillation.parts.distillation_metrics import DistillationLossMetric
    from ckd.distillation.plugin import KDReplayPlugin

    evaluators = []

    def attach(strategy):
        kd = next(p for p in strategy.plugins if isinstance(p, KDReplayPlugin))
        strategy.evaluator.metrics.append(DistillationLossMetric(kd))
        evaluators.append(strategy.evaluator)

    assert _train_guarded("kd-replay", fast=loader == "tensor", setup=attach) >= 10
    assert evaluators[0].get_last_metrics()["KD_Loss_Epoch/train_phase/train_stream"] > 0


def test_multi_head_teacher_does_not_sync():
    model = SyncFreeHeads((1, 8, 8), 10, n_tasks=5)
    assert _train_guarded("kd-replay", task_labels=True, model=model) >= 10


def test_the_guard_catches_each_kind_of_sync():
    x = torch.arange(6.0)
    for call in (
        lambda: x.sum().item(), lambda: x.tolist(), lambda: x.cpu(), lambda: x.nonzero(),
        lambda: torch.nonzero(x), lambda: bool(x[0]), lambda: x[x > 2], lambda: x.__setitem__(x > 2, 0.0),
        lambda: x.view(2, 3)[:, x[:3] > 0], lambda: int(x[1]), lambda: x.unique(),
    ):
        with forbid_host_syncs(), pytest.raises(HostSyncError):
            call()
    with forbid_host_syncs():  # what a step may do
        kept = x[torch.tensor([0, 2])] + x[1:3].sum()
        masked = torch.where(x > 2, x, 0.0)
        x2 = x.clone()
        x2[torch.tensor([1])] = 5.0
    # Everything is restored after the block.
    assert kept.tolist() == [3.0, 5.0] and masked.tolist() == [0, 0, 0, 3, 4, 5] and x2[1].item() == 5.0


@contextlib.contextmanager
def _cuda_sync_errors():
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _cuda_method_params():
    for method in available_methods():
        for loader in ("tensor", "avalanche"):
            if loader == "avalanche" and method in AVALANCHE_SYNCS:
                continue
            marks = []
            if method in AVALANCHE_CUDA_SYNCS:
                marks.append(pytest.mark.xfail(raises=RuntimeError, strict=True, reason=AVALANCHE_CUDA_SYNCS[method]))
            yield pytest.param(method, loader, marks=marks, id=f"{method}-{loader}")


@pytest.mark.cuda
@pytest.mark.parametrize("method,loader", list(_cuda_method_params()))
def test_no_training_iteration_syncs_on_cuda(method, loader):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    assert _train_guarded(method, device="cuda", context=_cuda_sync_errors, fast=loader == "tensor") >= 10
