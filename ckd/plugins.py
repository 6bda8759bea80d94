"""Deprecated path: ``ckd.plugins`` moved to :mod:`ckd.distillation.plugin`, :mod:`ckd.distillation.plugin_base`, :mod:`ckd.distillation.config`, :mod:`ckd.distillation.parts.logit_matching`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.distillation.plugin', 'ckd.distillation.plugin_base', 'ckd.distillation.config', 'ckd.distillation.parts.logit_matching')

from ckd.distillation.config import *  # noqa: E402, F403
from ckd.distillation.parts.logit_matching import *  # noqa: E402, F403
from ckd.distillation.plugin import *  # noqa: E402, F403
from ckd.distillation.plugin_base import *  # noqa: E402, F403
