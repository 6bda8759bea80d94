"""Deprecated path: ``ckd.tensor_replay`` moved to :mod:`ckd.engines.tensor_replay`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.engines.tensor_replay')

from ckd.engines.tensor_replay import *  # noqa: E402, F403
