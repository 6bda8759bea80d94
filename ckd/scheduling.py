"""Deprecated path: ``ckd.scheduling`` moved to :mod:`ckd.benchmarking.scheduling`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.benchmarking.scheduling')

from ckd.benchmarking.scheduling import *  # noqa: E402, F403
