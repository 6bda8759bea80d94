"""Deprecated path: ``ckd.loggers`` moved to :mod:`ckd.benchmarking.loggers`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.benchmarking.loggers')

from ckd.benchmarking.loggers import *  # noqa: E402, F403
