"""Deprecated path: ``ckd.streams`` moved to :mod:`ckd.data.streams`, :mod:`ckd.data.dataset_files`, :mod:`ckd.data.stream`, :mod:`ckd.data.user_streams`; it works for one more release."""

from ckd._moved import warn_moved

warn_moved(__name__, 'ckd.data.streams', 'ckd.data.dataset_files', 'ckd.data.stream', 'ckd.data.user_streams')

from ckd.data.dataset_files import *  # noqa: E402, F403
from ckd.data.stream import *  # noqa: E402, F403
from ckd.data.streams import *  # noqa: E402, F403
from ckd.data.user_streams import *  # noqa: E402, F403
