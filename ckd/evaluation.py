"""Deprecated path: ``ckd.evaluation`` moved to :mod:`ckd.distillation.parts.distillation_metrics`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.distillation.parts.distillation_metrics')

from ckd.distillation.parts.distillation_metrics import *  # noqa: E402, F403
