"""Deprecated path: ``ckd.vectorized_replay`` moved to :mod:`ckd.engines.vectorized_replay`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.engines.vectorized_replay')

from ckd.engines.vectorized_replay import *  # noqa: E402, F403
