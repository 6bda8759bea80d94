"""Deprecated path: ``ckd.weight_averaging`` moved to :mod:`ckd.distillation.parts.weight_averaging`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.distillation.parts.weight_averaging')

from ckd.distillation.parts.weight_averaging import *  # noqa: E402, F403
