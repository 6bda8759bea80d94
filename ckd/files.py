"""Deprecated path: ``ckd.files`` moved to :mod:`ckd.common.files`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.common.files')

from ckd.common.files import *  # noqa: E402, F403
