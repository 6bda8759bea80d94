"""Deprecated path: ``ckd.models`` moved to :mod:`ckd.data.models`, :mod:`ckd.distillation.layers`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.data.models', 'ckd.distillation.layers')

from ckd.data.models import *  # noqa: E402, F403
from ckd.distillation.layers import *  # noqa: E402, F403
