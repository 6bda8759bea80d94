"""Deprecated path: ``ckd.teacher`` moved to :mod:`ckd.distillation.teachers`, :mod:`ckd.distillation.frozen`, :mod:`ckd.distillation.ema`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.distillation.teachers', 'ckd.distillation.frozen', 'ckd.distillation.ema')

from ckd.distillation.ema import *  # noqa: E402, F403
from ckd.distillation.frozen import *  # noqa: E402, F403
from ckd.distillation.teachers import *  # noqa: E402, F403
