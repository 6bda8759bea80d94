"""The model's training forward and backward passes replayed from CUDA graphs.

A DER-protocol step on a GPU (a ResNet-18 on 32 + 32 images) is bound by kernel
launches, not arithmetic: a few hundred small kernels, each launched from Python.
:class:`CUDAGraphPlugin` captures the model's forward pass and its backward pass
once per minibatch shape (``torch.cuda.make_graphed_callables``) and then replays
them: one launch each. The rest of the step (augmentation, the teacher, the
losses, the optimizer, every plugin's hooks) stays eager and unchanged, so the
plugin composes with every strategy and plugin of ckd and Avalanche.

Static shapes: a graph replays one input shape, so each shape gets its own graph
once it has been seen ``capture_after`` times (the experience's full minibatches,
the ones with replayed rows appended, the short last minibatch of an epoch); at
most ``max_graphs`` are kept and other shapes run eagerly. The capture's warm-up
passes run the model on the current minibatch, so BatchNorm's running statistics
are saved before and restored after: the replayed step is the only one they see.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from avalanche.models import MultiTaskModule
from torch import Tensor

from ckd.engines.wrapping import StrategyWrappingPlugin

__all__ = ["CUDAGraphPlugin", "capture_cuda_graphs"]

Capture = Callable[[Callable[..., Tensor], tuple[Tensor, ...]], Callable[..., Tensor]]


def capture_cuda_graphs(function: Callable[..., Tensor], sample_args: tuple[Tensor, ...]) -> Callable[..., Tensor]:
    """``function``'s forward and backward passes on ``sample_args`` captured in CUDA graphs
    (``torch.cuda.make_graphed_callables``); autocast, when on, with its cache off as capture needs."""
    if torch.is_autocast_enabled("cuda"):
        with torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False):
            return torch.cuda.make_graphed_callables(function, sample_args, allow_unused_input=True)
    return torch.cuda.make_graphed_callables(function, sample_args, allow_unused_input=True)


def _has_hooks(model: torch.nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in model.modules())


class CUDAGraphPlugin(StrategyWrappingPlugin):
    """While the strategy trains, ``strategy.model``'s forward and backward passes on each
    minibatch shape run from CUDA graphs captured for that shape.

    It wraps the strategy's ``forward``: put it before ``MixedPrecisionPlugin`` and
    ``AugmentationPlugin`` in the plugin list, so that it is the innermost wrapper (it
    then sees the augmented rows, under autocast). Eager, as without it: evaluation,
    forward passes without gradients, task-labelled models (``MultiTaskModule``), a model
    while it has hooks (feature distillation registers some), and the first ``capture_after - 1``
    minibatches of each shape. The graphs are kept from one experience to the next and
    dropped when an experience starts with other parameters (a model that grew).

    The graphs hold the outputs of their last replay: the wrapper returns a copy, so a
    plugin may keep ``strategy.mb_output``. ``capture`` turns ``function(x, *params)`` and
    sample arguments into its graphed replacement (:func:`capture_cuda_graphs`; tests pass
    an eager one to check the plugin's logic on the CPU).
    """

    def __init__(self, *, capture_after: int = 2, max_graphs: int = 4, capture: Capture | None = None) -> None:
        super().__init__()
        if not isinstance(capture_after, int) or capture_after < 1:
            raise ValueError(f"capture_after must be an integer >= 1, got {capture_after!r}")
        if not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"max_graphs must be an integer >= 1, got {max_graphs!r}")
        self.capture_after = capture_after
        self.max_graphs = max_graphs
        self.capture = capture_cuda_graphs if capture is None else capture
        self.graphs: dict[tuple, Callable[..., Tensor]] = {}
        self.seen: Counter = Counter()
        self.eager_only: set[tuple] = set()  # shapes whose capture failed
        self._params: tuple[Tensor, ...] = ()
        self.captures = 0  # graphs captured over the plugin's life (the ones held are ``graphs``)

    def before_training(self, strategy, **kwargs) -> None:
        for plugin in strategy.plugins:
            if plugin is self:
                break
            if isinstance(plugin, StrategyWrappingPlugin):
                raise ValueError(
                    f"CUDAGraphPlugin must come before {type(plugin).__name__} in the plugin list: "
                    "it replaces the model call that the other wrappers wrap"
                )
        super().before_training(strategy, **kwargs)

    def before_training_exp(self, strategy, **kwargs) -> None:
        params = tuple(strategy.model.parameters())
        if len(params) != len(self._params) or any(p is not q for p, q in zip(params, self._params)):
            self.reset()
            self._params = params

    def reset(self) -> None:
        """Drop every graph (their memory pools go with them)."""
        self.graphs.clear()
        self.seen.clear()
        self.eager_only.clear()
        self._params = ()

    def wrap(self, strategy) -> None:
        forward = strategy.forward

        def graphed_forward():
            model = strategy.model
            if (not strategy.is_training or not torch.is_grad_enabled() or not model.training
                    or isinstance(model, MultiTaskModule) or _has_hooks(model)):  # a graph would skip the hooks
                return forward()
            x = strategy.mb_x
            key = (tuple(x.shape), x.dtype, x.device, torch.is_autocast_enabled(x.device.type),
                   torch.get_autocast_dtype(x.device.type))
            graphed = self.graphs.get(key)
            if graphed is None:
                graphed = self._maybe_capture(model, x, key)
                if graphed is None:
                    return forward()
            return graphed(x, *self._params).clone()

        self.replace(strategy, "forward", graphed_forward)

    def _maybe_capture(self, model: torch.nn.Module, x: Tensor, key: tuple) -> Callable[..., Tensor] | None:
        self.seen[key] += 1
        if key in self.eager_only or self.seen[key] < self.capture_after or len(self.graphs) >= self.max_graphs:
            return None
        params = self._params  # the model's, taken when its experience started

        def model_call(rows: Tensor, *_params: Tensor) -> Tensor:  # the parameters are inputs for their gradients
            return model(rows)

        buffers = [b.detach().clone() for b in model.buffers()]
        try:  # the graph keeps its sample input as the buffer it copies each minibatch into: not the batch's own
            graphed = self.capture(model_call, (x.detach().clone(), *params))
        except (RuntimeError, AssertionError) as error:  # e.g. a model that reads a tensor on the host in its forward
            warnings.warn(f"CUDA graph capture failed for input shape {tuple(x.shape)}, that shape runs eagerly: "
                          f"{error}", stacklevel=2)
            self.eager_only.add(key)
            graphed = None
        finally:
            with torch.no_grad():
                for b, saved in zip(model.buffers(), buffers):
                    b.copy_(saved)
        if graphed is not None:
            self.graphs[key] = graphed
            self.captures += 1
        return graphed

    def __getstate__(self) -> dict[str, Any]:  # a checkpoint pickles the plugins; graphs are captured anew
        state = dict(vars(self))
        state.update(graphs={}, seen=Counter(), eager_only=set(), _params=())
        return state

    def state_dict(self) -> dict[str, Any]:  # graphs are rebuilt after a restart
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
