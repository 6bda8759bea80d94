"""Run ``ckd.runner.run`` with one more plugin in its strategy (to record what the strategy sees)."""

from __future__ import annotations

import warnings

import ckd.methods
from ckd.runner import run

_MAKE_STRATEGY = ckd.methods.make_strategy  # the original: a second call must not wrap the first's wrapper


def run_with_plugin(config, plugin, monkeypatch) -> dict:
    """``run(config)`` with ``plugin`` appended to the strategy's plugins; its result."""
    def with_plugin(*args, extra_plugins=None, **kwargs):
        return _MAKE_STRATEGY(*args, extra_plugins=[*(extra_plugins or []), plugin], **kwargs)

    monkeypatch.setattr(ckd.methods, "make_strategy", with_plugin)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run(config)
