"""Deprecated path: ``ckd.augment`` moved to :mod:`ckd.data.augmentation`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.data.augmentation')

from ckd.data.augmentation import *  # noqa: E402, F403
