"""Deprecated path: ``ckd.user_code`` moved to :mod:`ckd.data.user_code`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.data.user_code')

from ckd.data.user_code import *  # noqa: E402, F403
