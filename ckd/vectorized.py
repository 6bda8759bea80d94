"""Deprecated path: ``ckd.vectorized`` moved to :mod:`ckd.engines.vectorized`, :mod:`ckd.engines.stacked_model`, :mod:`ckd.engines.stacked_kd`, :mod:`ckd.benchmarking.vectorized_runs`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.engines.vectorized', 'ckd.engines.stacked_model', 'ckd.engines.stacked_kd', 'ckd.benchmarking.vectorized_runs')

from ckd.benchmarking.vectorized_runs import *  # noqa: E402, F403
from ckd.engines.stacked_kd import *  # noqa: E402, F403
from ckd.engines.stacked_model import *  # noqa: E402, F403
from ckd.engines.vectorized import *  # noqa: E402, F403
