"""Deprecated path: ``ckd.methods`` moved to :mod:`ckd.benchmarking.methods`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.benchmarking.methods')

from ckd.benchmarking.methods import *  # noqa: E402, F403
