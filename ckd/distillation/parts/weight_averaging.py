"""Evaluate with an exponential moving average of the weights."""

from __future__ import annotations

from torch import nn

from ckd.distillation.ema import EMA_HALF_LIFE, EMAWeights
from ckd.distillation.plugin_base import StrategyBoundPlugin, steps_in_experience

__all__ = ["EMAEvaluationPlugin", "evaluation_model"]


class EMAEvaluationPlugin(StrategyBoundPlugin):
    """Keeps an EMA of the model's weights (:class:`ckd.distillation.teachers.EMAWeights`, updated
    after every training iteration) and evaluates with it: ``before_eval`` puts the
    averaged model in ``strategy.model`` and ``after_eval`` puts the trained one back.
    The trained model is never written to: a growing or multi-head model that Avalanche
    adapts to each evaluated experience grows the averaged copy instead, and should an
    evaluation raise, the trained model is back in ``strategy.model`` at the plugin's next
    hook (the next ``train`` or ``eval``). Code that scores a model outside
    ``strategy.eval`` should score :func:`evaluation_model` instead.

    half_life: a fraction of an experience's training iterations (default measured
    on validation splits, docs/tuning.md). One plugin serves one strategy
    (:class:`ckd.distillation.plugin.StrategyBoundPlugin`).
    """

    keeps = "its averaged weights"

    def __init__(self, *, half_life: float = EMA_HALF_LIFE, update_probability: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        self.weights = EMAWeights(half_life=half_life, update_probability=update_probability, seed=seed)
        self._trained: nn.Module | None = None  # strategy.model while the average stands in for it

    @property
    def model(self) -> nn.Module | None:
        """The averaged model (``None`` before training started)."""
        return self.weights.model

    def before_training(self, strategy, **kwargs) -> None:
        super().before_training(strategy)
        self._put_back(strategy)

    def before_training_exp(self, strategy, **kwargs) -> None:
        self.weights.start_experience(strategy.model, steps_in_experience(strategy))

    def after_training_iteration(self, strategy, **kwargs) -> None:
        self.weights.update()

    def before_eval(self, strategy, **kwargs) -> None:
        self._claim(strategy)
        self._put_back(strategy)  # after an evaluation that raised
        if self.weights.model is not None:
            self._trained, strategy.model = strategy.model, self.weights.model

    def after_eval(self, strategy, **kwargs) -> None:
        self._put_back(strategy)

    def _put_back(self, strategy) -> None:
        if self._trained is None:
            return
        strategy.model, self._trained = self._trained, None
        self.weights.pair(strategy.model)  # the evaluation may have grown the average

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
