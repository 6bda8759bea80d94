"""Avalanche's checkpoints of strategies with ckd's plugins: a dill rule that pickles torch's
optimizer classes by reference. Importing any ckd plugin registers it."""

from __future__ import annotations

import sys
from typing import Any

import dill

__all__: list[str] = []


def _importable(cls: type) -> bool:
    """Whether ``cls`` is found under its qualified name in its (imported) module."""
    module = sys.modules.get(getattr(cls, "__module__", None) or "")
    if module is None or module.__name__ == "__main__":
        return False
    found: Any = module
    for part in getattr(cls, "__qualname__", "").split("."):
        found = getattr(found, part, None)
    return found is cls


def _save_class(pickler, cls: type, postproc_list=None) -> None:
    """dill's pickling of a class, except that a class found under its name in its module is
    pickled by reference. dill 0.4 looks a module ``a.b.c`` up as attribute ``c`` of package
    ``a.b``; ``torch.optim`` deletes its submodules' names (``del sgd``), so dill copies
    ``torch.optim.sgd.SGD`` by value, with its methods and their module globals, and meets
    ``typing_extensions``' sentinel there, which refuses to be copied: ``PicklingError: Can't
    pickle sentinel``."""
    locate = getattr(dill._dill, "_locate_function", None)  # how dill finds a class (private)
    if _importable(cls) and (locate is None or not locate(cls, pickler)):
        pickler.save_global(cls)
    else:
        _DILL_SAVE_CLASS(pickler, cls, postproc_list)


# dill's own, also when this module is reloaded (its previous _save_class wraps it)
_DILL_SAVE_CLASS = getattr(dill.Pickler.dispatch[type], "__wrapped__", dill.Pickler.dispatch[type])
_save_class.__wrapped__ = _DILL_SAVE_CLASS
dill.register(type)(_save_class)
