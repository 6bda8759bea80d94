"""Deprecated path: ``ckd.metrics`` moved to :mod:`ckd.reports.metrics`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.reports.metrics')

from ckd.reports.metrics import *  # noqa: E402, F403
