"""Deprecated path: ``ckd.runner`` moved to :mod:`ckd.benchmarking.runner`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.benchmarking.runner')

from ckd.benchmarking.runner import *  # noqa: E402, F403
