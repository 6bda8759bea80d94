"""Deprecated path: ``ckd.devices`` moved to :mod:`ckd.distillation.devices`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.distillation.devices')

from ckd.distillation.devices import *  # noqa: E402, F403
