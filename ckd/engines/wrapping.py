"""Plugins that wrap a strategy's own methods (its ``forward``, ``backward``, ``optimizer_step``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from avalanche.core import SupervisedPlugin

__all__ = ["StrategyWrappingPlugin"]

# The strategy attribute that lists the plugins (by ``id``) whose wrappers it holds.
_WRAPPED_BY = "_ckd_wrapped_by"


class _Wrapper:
    """A wrapper set on a strategy instance. Pickled (as Avalanche's ``save_checkpoint``
    pickles the strategy) it becomes a :class:`_SavedWrapper`: its closure holds the
    strategy it was made for, which a checkpoint would otherwise store a second time and
    which a loaded strategy is not."""

    def __init__(self, function: Callable[[], Any]) -> None:
        self.function = function

    def __call__(self) -> Any:
        return self.function()

    def __reduce__(self):
        return _SavedWrapper, ()


class _SavedWrapper:
    """What a :class:`_Wrapper` leaves in a checkpoint: removed, and the plugins wrap anew,
    when the loaded strategy next trains."""

    def __call__(self) -> Any:
        raise RuntimeError("a strategy loaded from a checkpoint must train once before its wrapped methods run")


class StrategyWrappingPlugin(SupervisedPlugin):
    """Wraps each strategy's methods once, when it first trains (:meth:`wrap`, which sets
    them with :meth:`replace`); the wrappers should act only while ``strategy.is_training``.
    Other plugins may wrap them too. A strategy restored by Avalanche's
    ``maybe_load_checkpoint`` gets its class's methods back and is wrapped again."""

    def before_training(self, strategy, **kwargs) -> None:
        state = vars(strategy)
        saved = [name for name, value in state.items() if isinstance(value, _SavedWrapper)]
        if saved:  # loaded from a checkpoint: every plugin wraps anew
            for name in saved:
                del state[name]
            state[_WRAPPED_BY] = set()
        wrapped_by = state.setdefault(_WRAPPED_BY, set())
        if id(self) in wrapped_by:
            return
        wrapped_by.add(id(self))
        self.wrap(strategy)

    @staticmethod
    def replace(strategy, name: str, function: Callable[[], Any]) -> None:
        """Set ``strategy.<name>`` to ``function`` (which calls the method it wraps)."""
        setattr(strategy, name, _Wrapper(function))

    def wrap(self, strategy) -> None:
        raise NotImplementedError
