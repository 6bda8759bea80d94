"""Deprecated path: ``ckd.losses`` moved to :mod:`ckd.distillation.losses`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.distillation.losses')

from ckd.distillation.losses import *  # noqa: E402, F403
