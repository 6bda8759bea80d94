"""Deprecated path: ``ckd.training`` moved to :mod:`ckd.engines.training`, :mod:`ckd.engines.tensor_data`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.engines.training', 'ckd.engines.tensor_data')

from ckd.engines.tensor_data import *  # noqa: E402, F403
from ckd.engines.training import *  # noqa: E402, F403
