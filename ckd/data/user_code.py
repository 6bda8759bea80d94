"""User-defined streams and models named as ``package.module:function``."""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

__all__ = ["call_with_accepted", "is_reference", "load_callable"]


def is_reference(name: str) -> bool:
    """Whether ``name`` has the form ``package.module:function``."""
    module, sep, attribute = name.partition(":")
    return bool(sep and module and attribute)


def load_callable(reference: str, what: str) -> Callable[..., Any]:
    """The callable ``reference`` (``package.module:function``, attributes may be dotted) names.

    ``what`` ("stream", "model") goes into the error message.
    """
    if not is_reference(reference):
        raise ValueError(f"{what} {reference!r} is not of the form package.module:function")
    module_name, _, attribute = reference.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{what} {reference!r}: cannot import module {module_name!r} ({err})") from err
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{what} {reference!r}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{what} {reference!r} is not callable")
    return target


def call_with_accepted(
    function: Callable[..., Any], reference: str, given: dict[str, Any], defaults: dict[str, Any] | None = None
):
    """Call ``function`` with the keyword arguments of ``given`` it declares (all of
    them if it takes ``**kwargs``). With ``defaults``, an argument it does not declare
    must be at its default value there, else the user asked for something the
    function cannot do; without, undeclared arguments are dropped."""
    parameters = inspect.signature(function).parameters.values()
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    accepted = {k: v for k, v in given.items() if takes_any or k in names}
    for key, value in given.items():
        if defaults is not None and key not in accepted and value != defaults.get(key):
            raise ValueError(f"{reference} takes no argument {key!r}: add it to its parameters or leave {key} unset")
    return function(**accepted)
