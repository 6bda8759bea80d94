"""Deprecated path: ``ckd.augment`` moved to :mod:`ckd.data.augmentation`, :mod:`ckd.engines.augmentation`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.data.augmentation', 'ckd.engines.augmentation')

from ckd.data.augmentation import *  # noqa: E402, F403
from ckd.engines.augmentation import *  # noqa: E402, F403
