"""Deprecated path: ``ckd.plotting`` moved to :mod:`ckd.reports.plotting`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.reports.plotting')

from ckd.reports.plotting import *  # noqa: E402, F403
