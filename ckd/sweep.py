"""Deprecated path: ``ckd.sweep`` moved to :mod:`ckd.benchmarking.sweep`, :mod:`ckd.reports.sweeps`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.benchmarking.sweep', 'ckd.reports.sweeps')

from ckd.benchmarking.sweep import *  # noqa: E402, F403
from ckd.reports.sweeps import *  # noqa: E402, F403
