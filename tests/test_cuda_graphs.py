"""Tests for ``ckd.engines.cuda_graphs``: which forward passes are captured and replayed, and
that training with the plugin gives the eager numbers. On the CPU an eager stand-in for the
capture (:class:`EagerCapture`, which runs the warm-up passes a capture runs) checks the
plugin's logic; the ``cuda`` tests capture real graphs and skip without a GPU."""

from __future__ import annotations

import pickle

import pytest
import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from ckd.benchmarking.methods import TrainSettings, make_strategy, resolve_method_args
from ckd.benchmarking.run_config import RunConfig
from ckd.data.streams import make_stream
from ckd.engines.amp import MixedPrecisionPlugin
from ckd.engines.cuda_graphs import CUDAGraphPlugin


class EagerCapture:
    """Stands in for ``capture_cuda_graphs`` on the CPU: runs the three warm-up passes
    (forward and ``autograd.grad``, in training mode) that ``make_graphed_callables`` runs
    on the sample, then returns the function itself, counting its calls."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.shapes: list[tuple[int, ...]] = []
        self.calls = 0

    def __call__(self, function, sample_args):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        x, *params = sample_args
        for _ in range(3):
            out = function(*sample_args)
            torch.autograd.grad(out.sum(), [p for p in params if p.requires_grad])
        self.shapes.append(tuple(x.shape))

        def graphed(*args):
            self.calls += 1
            return function(*args)

        return graphed


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10),
    )


@pytest.fixture(scope="module")
def digits():
    return make_stream("split-digits", seed=0)


def _train(digits, method, extra, device="cpu", experiences=3):
    torch.manual_seed(0)
    model = _cnn()
    args = resolve_method_args(method, {"mem_size": 60, "replay_batch_size": 10} if method != "naive" else {})
    strategy = make_strategy(method, model, TrainSettings(0.1, 10, 1, 500, device), args, extra_plugins=extra,
                             fast=True)
    torch.manual_seed(1)
    for experience in digits.benchmark.train_stream[:experiences]:
        strategy.train(experience)
    return strategy


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


@pytest.mark.parametrize("method", ["naive", "kd-replay", "der"])
def test_training_with_the_plugin_gives_the_eager_weights_and_batchnorm_statistics(digits, method):
    capture = EagerCapture()
    eager = _train(digits, method, [])
    graphed = _train(digits, method, [CUDAGraphPlugin(capture=capture)])
    assert capture.shapes and capture.calls > 0
    # The warm-up passes ran the model three more times per capture, in training mode: without
    # the plugin putting BatchNorm's running statistics back, they would differ.
    assert _same_state(eager.model, graphed.model)
    assert len(capture.shapes) == len(set(capture.shapes)) <= 4


def test_each_shape_is_captured_once_seen_twice_and_at_most_max_graphs(digits):
    capture = EagerCapture()
    plugin = CUDAGraphPlugin(capture=capture, max_graphs=1)
    _train(digits, "kd-replay", [plugin])
    assert capture.shapes == [(20, 1, 8, 8)]  # 10 rows of the stream and 10 replayed, from the first step
    assert plugin.captures == 1 and len(plugin.graphs) == 1
    capture = EagerCapture()
    plugin = CUDAGraphPlugin(capture=capture, capture_after=1000)
    _train(digits, "kd-replay", [plugin])
    assert capture.shapes == [] and plugin.graphs == {}


def test_evaluation_and_forward_passes_without_gradients_stay_eager(digits):
    capture = EagerCapture()
    strategy = _train(digits, "naive", [CUDAGraphPlugin(capture=capture)], experiences=1)
    calls = capture.calls
    strategy.eval(digits.benchmark.test_stream[:1])
    assert capture.calls == calls


def test_bf16_autocast_shapes_are_captured_under_autocast(digits):
    seen = []

    class AutocastProbe(EagerCapture):
        def __call__(self, function, sample_args):
            seen.append(torch.is_autocast_enabled("cpu"))
            return super().__call__(function, sample_args)

    eager = _train(digits, "kd-replay", [MixedPrecisionPlugin("bf16", "cpu")], experiences=2)
    graphed = _train(digits, "kd-replay", [CUDAGraphPlugin(capture=AutocastProbe()), MixedPrecisionPlugin("bf16", "cpu")],
                     experiences=2)
    assert seen and all(seen)
    assert _same_state(eager.model, graphed.model)


def test_the_plugin_must_be_the_innermost_wrapper(digits):
    with pytest.raises(ValueError, match="CUDAGraphPlugin must come before MixedPrecisionPlugin"):
        _train(digits, "naive", [MixedPrecisionPlugin("bf16", "cpu"), CUDAGraphPlugin(capture=EagerCapture())],
               experiences=1)


def test_a_model_with_hooks_or_a_failed_capture_trains_eagerly(digits):
    class Hooked(SupervisedPlugin):
        """From the second experience on, a forward hook on the first layer (as feature distillation's)."""

        def __init__(self):
            super().__init__()
            self.calls = 0

        def before_training_exp(self, strategy, **kwargs):
            if strategy.clock.train_exp_counter == 1:
                strategy.model[0].register_forward_hook(lambda module, inputs, output: self.count())

        def count(self):
            self.calls += 1

    capture, hooked = EagerCapture(), Hooked()
    strategy = _train(digits, "naive", [hooked, CUDAGraphPlugin(capture=capture)], experiences=2)
    assert capture.shapes and capture.calls > 0  # the first experience replayed its graph
    iterations = -(-len(digits.benchmark.train_stream[1].dataset) // 10)
    assert hooked.calls == iterations  # the second ran eagerly, so the hook saw every minibatch
    calls = capture.calls
    strategy.train(digits.benchmark.train_stream[2])
    assert capture.calls == calls
    eager = _train(digits, "naive", [], experiences=2)
    with pytest.warns(UserWarning, match="CUDA graph capture failed for input shape"):
        failed = _train(digits, "naive", [CUDAGraphPlugin(capture=EagerCapture(fail=True))], experiences=2)
    assert _same_state(eager.model, failed.model)


def test_a_pickled_plugin_leaves_its_graphs_behind(digits):
    plugin = CUDAGraphPlugin(capture=EagerCapture())
    _train(digits, "naive", [plugin], experiences=1)
    plugin.graphs[("shape",)] = lambda *args: None  # as if a capture were still held
    copy = pickle.loads(pickle.dumps(plugin))
    assert copy.graphs == {} and copy.capture_after == plugin.capture_after


def test_settings_and_run_config_are_checked():
    with pytest.raises(ValueError, match="capture_after must be an integer >= 1"):
        CUDAGraphPlugin(capture_after=0)
    with pytest.raises(ValueError, match="max_graphs must be an integer >= 1"):
        CUDAGraphPlugin(max_graphs=0)
    with pytest.raises(ValueError, match="cuda_graphs needs device 'cuda'"):
        RunConfig(stream="split-digits", method="naive", cuda_graphs=True)
    with pytest.raises(ValueError, match="cuda_graphs must be true or false"):
        RunConfig(stream="split-digits", method="naive", device="cuda", cuda_graphs="yes")
    assert "cuda_graphs" not in RunConfig(stream="split-digits", method="naive").resolved()
    assert RunConfig(stream="split-digits", method="naive", device="cuda", cuda_graphs=True).resolved()["cuda_graphs"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", [None, "bf16"])
@pytest.mark.parametrize("method", ["kd-replay", "der"])
def test_cuda_graphs_train_to_the_eager_weights_on_a_gpu(digits, method, amp):
    extra = [] if amp is None else [MixedPrecisionPlugin(amp, "cuda")]
    torch.backends.cudnn.deterministic = True
    eager = _train(digits, method, list(extra), device="cuda")
    extra = [] if amp is None else [MixedPrecisionPlugin(amp, "cuda")]
    plugin = CUDAGraphPlugin()
    graphed = _train(digits, method, [plugin, *extra], device="cuda")
    assert plugin.captures >= 2  # the first experience's minibatches, then those with replayed rows
    for (name, a), b in zip(eager.model.state_dict().items(), graphed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
