"""Plugins that wrap a strategy's own methods (its ``forward``, ``backward``, ``optimizer_step``)."""

from __future__ import annotations

from avalanche.core import SupervisedPlugin

__all__ = ["StrategyWrappingPlugin"]


class StrategyWrappingPlugin(SupervisedPlugin):
    """Wraps each strategy's methods once, when it first trains (:meth:`wrap`); the wrappers
    should act only while ``strategy.is_training``. Other plugins may wrap them too."""

    def __init__(self) -> None:
        super().__init__()
        self._wrapped: set[int] = set()

    def before_training(self, strategy, **kwargs) -> None:
        if id(strategy) in self._wrapped:
            return
        self._wrapped.add(id(strategy))
        self.wrap(strategy)

    def wrap(self, strategy) -> None:
        raise NotImplementedError
