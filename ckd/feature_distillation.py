"""Deprecated path: ``ckd.feature_distillation`` moved to :mod:`ckd.distillation.parts.feature_distillation`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.distillation.parts.feature_distillation')

from ckd.distillation.parts.feature_distillation import *  # noqa: E402, F403
