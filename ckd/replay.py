"""Deprecated path: ``ckd.replay`` moved to :mod:`ckd.distillation.replay`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.distillation.replay')

from ckd.distillation.replay import *  # noqa: E402, F403
