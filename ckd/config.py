"""Deprecated path: ``ckd.config`` moved to :mod:`ckd.distillation.config`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.distillation.config')

from ckd.distillation.config import *  # noqa: E402, F403
