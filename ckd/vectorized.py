"""Deprecated path: ``ckd.vectorized`` moved to :mod:`ckd.engines.vectorized`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.engines.vectorized')

from ckd.engines.vectorized import *  # noqa: E402, F403
