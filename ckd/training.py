"""Deprecated path: ``ckd.training`` moved to :mod:`ckd.engines.training`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.engines.training')

from ckd.engines.training import *  # noqa: E402, F403
