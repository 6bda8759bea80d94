"""Bias correction for class-incremental heads."""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from ckd.distillation.layers import last_linear

__all__ = ["WeightAligningPlugin", "align_weights"]


@torch.no_grad()
def align_weights(head: nn.Linear, old: list[int], new: list[int]) -> float:
    """Scale the rows of ``head.weight`` (and bias) for the ``new`` classes by
    ``γ = mean‖w_old‖ / mean‖w_new‖`` (Weight Aligning, Zhao et al., CVPR 2020).
    Returns ``γ`` (1.0 when either group is empty)."""
    if not old or not new:
        return 1.0
    norms = head.weight.norm(dim=1)
    gamma = float(norms[old].mean() / norms[new].mean().clamp_min(1e-12))
    head.weight[new] *= gamma
    if head.bias is not None:
        head.bias[new] *= gamma
    return gamma


class WeightAligningPlugin(SupervisedPlugin):
    """After each experience, the output rows of the classes it introduced are scaled
    so that their mean norm equals the old classes' (:func:`align_weights`): a
    class-incremental head trained mostly on new data grows larger weights for the
    new classes. Place it before the KD plugin, so the teacher snapshot is aligned."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []
        self.gammas: list[float] = []

    def after_training_exp(self, strategy, **kwargs) -> None:
        classes = sorted(int(c) for c in strategy.experience.classes_in_this_experience)
        new = [c for c in classes if c not in self.seen]
        self.gammas.append(align_weights(last_linear(strategy.model, "weight aligning"), list(self.seen), new))
        self.seen = sorted(set(self.seen) | set(new))

    def state_dict(self) -> dict:
        return {"seen": list(self.seen), "gammas": list(self.gammas)}

    def load_state_dict(self, state: dict) -> None:
        self.seen, self.gammas = list(state["seen"]), list(state["gammas"])
