"""Deprecated path: ``ckd.amp`` moved to :mod:`ckd.engines.amp`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.engines.amp')

from ckd.engines.amp import *  # noqa: E402, F403
