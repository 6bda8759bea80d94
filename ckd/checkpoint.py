"""Deprecated path: ``ckd.checkpoint`` moved to :mod:`ckd.benchmarking.checkpoint`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.benchmarking.checkpoint')

from ckd.benchmarking.checkpoint import *  # noqa: E402, F403
