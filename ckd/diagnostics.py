"""Deprecated path: ``ckd.diagnostics`` moved to :mod:`ckd.distillation.diagnostics`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.distillation.diagnostics')

from ckd.distillation.diagnostics import *  # noqa: E402, F403
