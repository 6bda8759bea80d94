"""Deprecated path: ``ckd.ray_scheduler`` moved to :mod:`ckd.benchmarking.ray_scheduler`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.benchmarking.ray_scheduler')

from ckd.benchmarking.ray_scheduler import *  # noqa: E402, F403
