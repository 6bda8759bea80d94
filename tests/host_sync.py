"""A CPU stand-in for ``torch.cuda.set_sync_debug_mode("error")``: while armed, every
Tensor call that would make the host wait for a GPU raises ``HostSyncError``.

Patched: ``Tensor.item``, ``.tolist``, ``.cpu``, ``.numpy``, ``.nonzero`` (and
``torch.nonzero``, ``torch.argwhere``, ``masked_select``, ``unique``),
``bool()``/``int()``/``float()`` of a tensor, and indexing or index-assignment with a
boolean mask (the output shape depends on the mask's values, which the host must read).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

__all__ = ["HostSyncError", "forbid_host_syncs"]


class HostSyncError(AssertionError):
    """A training step asked the device for a value on the host."""


def _has_bool_mask(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, Tensor) and i.dtype == torch.bool for i in items)


def _refuse(name: str) -> Callable:
    def refuse(*args, **kwargs):
        raise HostSyncError(f"{name} inside a training step waits for the device")

    return refuse


@contextlib.contextmanager
def forbid_host_syncs() -> Iterator[None]:
    """Make host-device syncs raise while the block runs (restored on exit)."""
    tensor_methods = ("item", "tolist", "cpu", "numpy", "nonzero", "masked_select", "unique",
                      "__bool__", "__int__", "__float__")
    saved: list[tuple[object, str, bool, Any]] = []

    def patch(owner: object, name: str, value: Any) -> None:
        saved.append((owner, name, name in vars(owner), vars(owner).get(name)))
        setattr(owner, name, value)

    getitem, setitem = Tensor.__getitem__, Tensor.__setitem__

    def guarded_getitem(self, index):
        if _has_bool_mask(index):
            raise HostSyncError("boolean-mask indexing inside a training step waits for the device")
        return getitem(self, index)

    def guarded_setitem(self, index, value):
        if _has_bool_mask(index):
            raise HostSyncError("boolean-mask index assignment inside a training step waits for the device")
        return setitem(self, index, value)

    try:
        for name in tensor_methods:
            patch(Tensor, name, _refuse(f"Tensor.{name}"))
        patch(Tensor, "__getitem__", guarded_getitem)
        patch(Tensor, "__setitem__", guarded_setitem)
        for name in ("nonzero", "argwhere", "masked_select", "unique"):
            patch(torch, name, _refuse(f"torch.{name}"))
        yield
    finally:
        for owner, name, owned, value in reversed(saved):
            if owned:
                setattr(owner, name, value)
            else:
                delattr(owner, name)
