"""Deprecated path: ``ckd.summary`` moved to :mod:`ckd.reports.summary`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.reports.summary')

from ckd.reports.summary import *  # noqa: E402, F403
