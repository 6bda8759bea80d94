"""Deprecated path: ``ckd.runner`` moved to :mod:`ckd.benchmarking.runner`, :mod:`ckd.benchmarking.run_config`, :mod:`ckd.benchmarking.scoring`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.benchmarking.runner', 'ckd.benchmarking.run_config', 'ckd.benchmarking.scoring')

from ckd.benchmarking.run_config import *  # noqa: E402, F403
from ckd.benchmarking.runner import *  # noqa: E402, F403
from ckd.benchmarking.scoring import *  # noqa: E402, F403
