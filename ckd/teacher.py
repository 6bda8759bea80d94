"""Deprecated path: ``ckd.teacher`` moved to :mod:`ckd.distillation.teachers`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.distillation.teachers')

from ckd.distillation.teachers import *  # noqa: E402, F403
