"""Deprecated path: ``ckd.ray_sweep`` moved to :mod:`ckd.benchmarking.tune_scheduler`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.benchmarking.tune_scheduler')

from ckd.benchmarking.tune_scheduler import *  # noqa: E402, F403
