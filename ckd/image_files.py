"""Deprecated path: ``ckd.image_files`` moved to :mod:`ckd.data.image_files`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.data.image_files')

from ckd.data.image_files import *  # noqa: E402, F403
