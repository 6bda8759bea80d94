"""DER's logit term beside the KD plugin's KL."""

from __future__ import annotations

from avalanche.core import SupervisedPlugin

from ckd.distillation.losses import logit_mse
from ckd.distillation.plugin import KDReplayPlugin
from ckd.distillation.plugin_base import require_among_plugins

__all__ = ["LogitMatchingPlugin"]


class LogitMatchingPlugin(SupervisedPlugin):
    """``weight · MSE(z_s, z_t)`` on the rows ``kd`` replayed, against the targets its
    teacher gave in the same step (DER's logit term, beside the KL): the KL holds the
    logits' differences, the MSE also their common level. Before or after ``kd`` in
    ``plugins=[...]``, which must hold it."""

    def __init__(self, kd: KDReplayPlugin, *, weight: float = 1.0) -> None:
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.kd = kd
        self.weight = weight

    def before_training(self, strategy, **kwargs) -> None:
        require_among_plugins(strategy, self.kd, self)

    def before_backward(self, strategy, **kwargs) -> None:
        step = self.kd.replay
        if step is None or step.teacher_logits is None or self.weight == 0:
            return
        strategy.loss += self.weight * logit_mse(step.student_logits, step.teacher_logits, step.teacher_mask)

    def state_dict(self) -> dict:  # the targets are kd's
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
