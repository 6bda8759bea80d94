"""Deprecated path: ``ckd.streams`` moved to :mod:`ckd.data.streams`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.data.streams')

from ckd.data.streams import *  # noqa: E402, F403
