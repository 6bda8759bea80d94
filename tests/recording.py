"""Run ``ckd.benchmarking.runner.run`` with one more plugin in its strategy (to record what the strategy sees),
or with its strategies stopped at an experience (to interrupt a run)."""

from __future__ import annotations

import warnings

import ckd.benchmarking.methods
import ckd.benchmarking.runner
from ckd.benchmarking.runner import run

_MAKE_STRATEGY = ckd.benchmarking.methods.make_strategy  # the original: a second call must not wrap the first's wrapper


def run_with_plugin(config, plugin, monkeypatch) -> dict:
    """``run(config)`` with ``plugin`` appended to the strategy's plugins; its result."""
    def with_plugin(*args, extra_plugins=None, **kwargs):
        return _MAKE_STRATEGY(*args, extra_plugins=[*(extra_plugins or []), plugin], **kwargs)

    monkeypatch.setattr(ckd.benchmarking.runner, "make_strategy", with_plugin)  # where run looks it up
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run(config)


def interrupt_at(monkeypatch, experience: int) -> None:
    """Runs built from now on stop (``KeyboardInterrupt``) when ``experience`` starts."""
    def interrupted(*args, **kwargs):
        strategy = _MAKE_STRATEGY(*args, **kwargs)
        train = strategy.train

        def train_then_die(exp, **kw):
            if exp.current_experience == experience:
                raise KeyboardInterrupt
            return train(exp, **kw)

        strategy.train = train_then_die
        return strategy

    monkeypatch.setattr(ckd.benchmarking.runner, "make_strategy", interrupted)


def interrupt_inside(monkeypatch, experience: int, epoch: int, iteration: int = 1) -> None:
    """Runs built from now on stop (``KeyboardInterrupt``) before training iteration ``iteration``
    of epoch ``epoch`` of experience ``experience`` (no plugin added: the checkpoints' key is unchanged)."""
    def interrupted(*args, **kwargs):
        strategy = _MAKE_STRATEGY(*args, **kwargs)
        before = strategy._before_training_iteration

        def die_there(**kw):
            clock = strategy.clock
            if (clock.train_exp_counter, clock.train_exp_epochs, clock.train_epoch_iterations) == (
                    experience, epoch, iteration):
                raise KeyboardInterrupt
            return before(**kw)

        strategy._before_training_iteration = die_there
        return strategy

    monkeypatch.setattr(ckd.benchmarking.runner, "make_strategy", interrupted)
