"""Run ``ckd.runner.run`` with one more plugin in its strategy (to record what the strategy sees)."""

from __future__ import annotations

import warnings

import ckd.methods
from ckd.runner import run


def run_with_plugin(config, plugin, monkeypatch) -> dict:
    """``run(config)`` with ``plugin`` appended to the strategy's plugins; its result."""
    make_strategy = ckd.methods.make_strategy

    def with_plugin(*args, extra_plugins=None, **kwargs):
        return make_strategy(*args, extra_plugins=[*(extra_plugins or []), plugin], **kwargs)

    monkeypatch.setattr(ckd.methods, "make_strategy", with_plugin)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run(config)
