"""What every ckd plugin reads from an Avalanche strategy, and the plugin that belongs to one strategy."""

from __future__ import annotations

import contextlib
import weakref

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor

from ckd.distillation.known_classes import grow_seen_classes

__all__ = [
    "StrategyBoundPlugin", "add_task_column", "mark_seen_classes", "require_among_plugins", "steps_in_experience",
    "teacher_precision",
]


def steps_in_experience(strategy) -> int:
    """Training iterations the strategy will run on its current experience."""
    n = len(strategy.experience.dataset)
    return -(-n // strategy.train_mb_size) * strategy.train_epochs


def add_task_column(strategy) -> None:
    """Give a minibatch of ``(x, y)`` samples (an Avalanche dataset without task labels)
    the task label 0, as a third column, for every plugin and forward that reads it."""
    if len(strategy.mbatch) < 3:
        strategy.mbatch.append(torch.zeros_like(strategy.mbatch[1]))


def teacher_precision(strategy) -> contextlib.AbstractContextManager:
    """The context a teacher's forward pass runs in during a training step: the autocast of
    the first plugin that offers one (``teacher_autocast()`` not ``None``, as
    ``ckd.engines.amp.MixedPrecisionPlugin(teachers=True)``), else none (float32)."""
    for plugin in strategy.plugins:
        offer = getattr(plugin, "teacher_autocast", None)
        context = offer() if offer is not None else None
        if context is not None:
            return context
    return contextlib.nullcontext()


def require_among_plugins(strategy, plugin, reader) -> None:
    """Refuse to train when ``plugin``, whose state ``reader`` reads, is not among the
    strategy's plugins: it would never run, and ``reader`` would add (or report) nothing."""
    if not any(p is plugin for p in strategy.plugins):
        name = type(plugin).__name__
        raise ValueError(f"{type(reader).__name__} reads a {name} that is not among the strategy's plugins "
                         f"(it would never run): pass that same {name} object in plugins=[...]")


def mark_seen_classes(seen: Tensor, experience) -> Tensor:
    """bool ``(n_tasks, C)`` ``seen`` grown to include ``experience``'s task and classes."""
    task = int(experience.task_label) if hasattr(experience, "task_label") else 0
    return grow_seen_classes(seen, task, [int(c) for c in experience.classes_in_this_experience])


class StrategyBoundPlugin(SupervisedPlugin):
    """A plugin whose state (a buffer, a teacher, averaged weights) belongs to the first
    strategy that trains or evaluates with it: another strategy is refused, so a plugin
    reused for a second run cannot carry the first run's state into it. A plugin restored
    from a checkpoint (pickled, or given ``load_state_dict``) belongs to the strategy it next meets."""

    keeps = "its state"  # what the refusal names
    _strategy: weakref.ref | None = None

    def before_training(self, strategy, **kwargs) -> None:
        self._claim(strategy)

    def _claim(self, strategy) -> None:
        owner = self._strategy
        if owner is None:
            self._strategy = weakref.ref(strategy)
        elif owner() is not strategy:
            name = type(self).__name__
            raise RuntimeError(f"this {name} already trained with another strategy and keeps {self.keeps}: "
                               f"give each strategy (each run) its own {name}(...)")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_strategy", None)
        return state
