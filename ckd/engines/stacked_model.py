"""``S`` models of one architecture as one stacked model: the forward of the vectorized pass."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

__all__ = ["StackedModel"]


class StackedModel(nn.Module):
    """``S`` models of one architecture as stacked parameters ``(S, ...)``.

    ``forward(x)``: ``x (S, B, ...)`` → ``(S, B, C)``, seed ``s``'s model on ``x[s]``
    (``vmap`` of ``functional_call``). ``params`` may replace the trained
    parameters (a teacher's, same layout). The models must hold no buffers.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        for model in models:
            if any(True for _ in model.buffers()) or any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules()):
                raise ValueError(
                    "vectorize needs a model without buffers or dropout (no BatchNorm): use model 'mlp' or 'cnn'"
                )
        params, _ = stack_module_state(list(models))
        self.names = list(params)
        self.stacked = nn.ParameterList([nn.Parameter(params[name].detach().clone()) for name in self.names])
        self.base = [copy.deepcopy(models[0]).to("meta")]  # a list: not a submodule
        self.n_models = len(models)
        self.layers = _plain_layers(models[0])
        self._cache()

    def _cache(self) -> None:
        # ParameterList indexing is slow Python; a step reads the parameters twice.
        self.tensors: list[Tensor] = list(self.stacked)
        self._params = dict(zip(self.names, self.tensors))

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._cache()
        return out

    def param_dict(self) -> dict[str, Tensor]:
        return self._params

    def forward(self, x: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        base = self.base[0]
        params = self.param_dict() if params is None else params
        if self.layers is not None:
            return _plain_forward(self.layers, params, x)

        def one(p: dict[str, Tensor], xs: Tensor) -> Tensor:
            return functional_call(base, p, (xs,))

        return vmap(one)(params, x)

    def seed_forward(self, s: int, x: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        """Seed ``s``'s model alone on ``x (B, ...)``."""
        params = self.param_dict() if params is None else params
        return functional_call(self.base[0], {k: v[s] for k, v in params.items()}, (x,))

    def detached(self) -> dict[str, Tensor]:
        """A copy of the stacked parameters (a snapshot teacher)."""
        return {k: v.detach().clone() for k, v in self.param_dict().items()}

    @torch.no_grad()
    def copy_into(self, s: int, model: nn.Module, params: dict[str, Tensor] | None = None) -> nn.Module:
        """Load seed ``s``'s parameters (or those of ``params``, same layout) into ``model``."""
        params = self.param_dict() if params is None else params
        for name, p in model.named_parameters():
            p.copy_(params[name][s])
        return model


def _plain_layers(model: nn.Module) -> list[tuple[str, ...]] | None:
    """An ``nn.Sequential`` of ``Flatten``, ``Linear``, ``ReLU`` and ``Identity`` layers (the
    ``mlp``) as steps that :func:`_plain_forward` runs with batched matrix products; ``None``
    for anything else (run with ``vmap``, whose per-call cost dominates a small model's step)."""
    if not isinstance(model, nn.Sequential):
        return None
    steps = []
    for name, layer in model.named_children():
        if isinstance(layer, nn.Linear):
            steps.append(("linear", f"{name}.weight", f"{name}.bias" if layer.bias is not None else ""))
        elif isinstance(layer, nn.ReLU):
            steps.append(("relu",))
        elif isinstance(layer, nn.Flatten) and layer.start_dim == 1 and layer.end_dim == -1 and not steps:
            steps.append(("flatten",))
        elif not isinstance(layer, nn.Identity):
            return None
    return steps


def _plain_forward(steps: list[tuple[str, ...]], params: dict[str, Tensor], x: Tensor) -> Tensor:
    """``x (S, B, ...)`` through :func:`_plain_layers`' steps with stacked ``params`` → ``(S, B, C)``.

    Activations are kept transposed, ``(S, features, B)``, and each layer computes
    ``W · h`` (``baddbmm``): the weight gradients then come out in the weights' own
    layout, with no copy to make them contiguous, and no operand is ever copied."""
    h = x.flatten(2) if steps and steps[0][0] == "flatten" else x
    if h.dim() != 3:
        raise ValueError(f"a stacked linear layer needs inputs (S, B, features), got {tuple(h.shape)}")
    h = h.transpose(1, 2)
    for step in steps:
        if step[0] == "linear":
            weight = params[step[1]]
            h = torch.baddbmm(params[step[2]].unsqueeze(2), weight, h) if step[2] else torch.bmm(weight, h)
        elif step[0] == "relu":
            h = torch.relu(h)
    return h.transpose(1, 2)
