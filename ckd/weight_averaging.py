"""Evaluate with an exponential moving average of the weights."""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from ckd.plugins import steps_in_experience
from ckd.teacher import EMAWeights

__all__ = ["EMAEvaluationPlugin", "evaluation_model"]


class EMAEvaluationPlugin(SupervisedPlugin):
    """Keeps an EMA of the model's weights (:class:`ckd.teacher.EMAWeights`, updated
    after every training iteration) and evaluates with it: ``before_eval`` copies the
    averaged weights into ``strategy.model`` and ``after_eval`` puts the trained
    ones back. Code that scores a model outside ``strategy.eval`` should score
    :func:`evaluation_model` instead.

    half_life: a fraction of an experience's training iterations (default measured
    on validation splits, docs/tuning.md).
    """

    def __init__(self, half_life: float = 0.3, update_probability: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        self.weights = EMAWeights(half_life, update_probability, seed)
        self._saved: list[torch.Tensor] | None = None

    @property
    def model(self) -> nn.Module | None:
        """The averaged model (``None`` before training started)."""
        return self.weights.model

    def before_training_exp(self, strategy, **kwargs) -> None:
        self.weights.start_experience(strategy.model, steps_in_experience(strategy))

    def after_training_iteration(self, strategy, **kwargs) -> None:
        self.weights.update()

    @torch.no_grad()
    def before_eval(self, strategy, **kwargs) -> None:
        if self.weights.model is None:
            return
        live = list(strategy.model.state_dict().values())
        self._saved = [t.clone() for t in live]
        averaged = list(self.weights.model.state_dict().values())
        if len(averaged) == len(live):
            torch._foreach_copy_(live, averaged)

    @torch.no_grad()
    def after_eval(self, strategy, **kwargs) -> None:
        if self._saved is not None:
            torch._foreach_copy_(list(strategy.model.state_dict().values()), self._saved)
            self._saved = None

    def state_dict(self) -> dict:
        """What the plugin keeps between experiences: the averaged weights."""
        return {"weights": self.weights.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.weights.load_state_dict(state["weights"])


def evaluation_model(strategy) -> tuple[nn.Module, str]:
    """The model a strategy should be scored with, and its name: the EMA of an
    :class:`EMAEvaluationPlugin` when the strategy carries one, else ``strategy.model``."""
    for plugin in strategy.plugins:
        if isinstance(plugin, EMAEvaluationPlugin) and plugin.model is not None:
            return plugin.model, "ema"
    return strategy.model, "model"
