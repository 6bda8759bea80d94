"""Deprecated path: ``ckd.bias_correction`` moved to :mod:`ckd.distillation.parts.weight_aligning`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.distillation.parts.weight_aligning')

from ckd.distillation.parts.weight_aligning import *  # noqa: E402, F403
