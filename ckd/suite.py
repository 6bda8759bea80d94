"""Deprecated path: ``ckd.suite`` moved to :mod:`ckd.benchmarking.suite`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.benchmarking.suite')

from ckd.benchmarking.suite import *  # noqa: E402, F403
