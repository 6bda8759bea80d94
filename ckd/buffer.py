"""Deprecated path: ``ckd.buffer`` moved to :mod:`ckd.distillation.buffer`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.distillation.buffer')

from ckd.distillation.buffer import *  # noqa: E402, F403
