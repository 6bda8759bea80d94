"""Deprecated path: ``ckd.errors`` moved to :mod:`ckd.common.errors`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.common.errors')

from ckd.common.errors import *  # noqa: E402, F403
