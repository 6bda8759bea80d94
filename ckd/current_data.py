"""Deprecated path: ``ckd.current_data`` moved to :mod:`ckd.distillation.parts.current_data`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.distillation.parts.current_data')

from ckd.distillation.parts.current_data import *  # noqa: E402, F403
