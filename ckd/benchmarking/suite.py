"""Suites: methods × streams × seeds × settings from a TOML file.

```toml
[suite]
seeds = [0, 1, 2]            # default seeds of every run entry
vectorize = false            # true: each entry's seeds train as one stacked model (ckd.engines.vectorized)
ray = "auto"                 # optional: every run a Ray task on this cluster (true: a local Ray instance)

[defaults]                   # RunConfig fields shared by all entries
epochs = 1
batch_size = 10

[[run]]
stream = "split-mnist"       # a name or a list of names
method = "der"
label = "der++@200"          # optional; names the setting in tables
seeds = [0, 1, 2, 3, 4]      # optional override
lr = 0.03
[run.args]                   # method settings (ckd.benchmarking.methods.METHOD_DEFAULTS)
mem_size = 200
beta = 1.0
```
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from ckd.benchmarking.methods import resolve_method_args
from ckd.benchmarking.run_config import RunConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["load_suite", "method_configs", "suite_ray_address", "suite_vectorizes"]

_RUN_FIELDS = {f.name for f in fields(RunConfig)} - {"method_args", "seed"}


def load_suite(path: str | os.PathLike, device: str | None = None) -> list[RunConfig]:
    """Expand a suite file into run configs (validated; unknown keys are errors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"suite file not found: {path}")
    spec = tomllib.loads(path.read_text())
    unknown = set(spec) - {"suite", "defaults", "run", "search"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level tables {sorted(unknown)}")
    default_seeds = spec.get("suite", {}).get("seeds", [0])
    defaults = dict(spec.get("defaults", {}))
    _check_keys(defaults, _RUN_FIELDS, f"{path} [defaults]")
    entries = spec.get("run", [])
    if not entries:
        raise ValueError(f"{path}: no [[run]] entries")
    configs: list[RunConfig] = []
    for k, entry in enumerate(entries):
        entry = dict(entry)
        args = dict(entry.pop("args", {}))
        seeds = entry.pop("seeds", default_seeds)
        streams = entry.pop("stream", defaults.get("stream"))
        streams = [streams] if isinstance(streams, str) else list(streams or [])
        if not streams:
            raise ValueError(f"{path}: [[run]] #{k} has no stream")
        _check_keys(entry, _RUN_FIELDS, f"{path} [[run]] #{k}")
        for stream in streams:
            for seed in seeds:
                values: dict[str, Any] = {**defaults, **entry, "stream": stream, "seed": int(seed)}
                if device is not None:
                    values["device"] = device
                configs.append(RunConfig(method_args=args, **values))
    return configs


def suite_vectorizes(path: str | os.PathLike) -> bool:
    """The suite's ``[suite] vectorize`` (default false): train the seeds of each entry
    in one pass (:func:`ckd.engines.vectorized.run_vectorized`)."""
    value = tomllib.loads(Path(path).read_text()).get("suite", {}).get("vectorize", False)
    if not isinstance(value, bool):
        raise ValueError(f"{path}: [suite] vectorize must be true or false, got {value!r}")
    return value


def suite_ray_address(path: str | os.PathLike) -> str | None:
    """The suite's ``[suite] ray``: ``None`` (absent or false) runs on this machine,
    ``true`` on a local Ray instance (``"local"``), a string on that Ray address
    (``"auto"``, ``"ray://host:10001"``; :class:`ckd.benchmarking.ray_scheduler.RayScheduler`)."""
    value = tomllib.loads(Path(path).read_text()).get("suite", {}).get("ray", False)
    if value is False:
        return None
    if value is True:
        return "local"
    if not isinstance(value, str) or not value:
        raise ValueError(f'{path}: [suite] ray must be true, false or an address such as "auto", got {value!r}')
    return value


def method_configs(
    *,
    stream: str,
    methods: Sequence[str],
    seeds: Sequence[int],
    settings: Mapping[str, Any] | None = None,
    **common: Any,
) -> list[RunConfig]:
    """One config per method and seed (method-major), sharing the ``RunConfig`` fields in ``common``.

    With one method, ``settings`` are its method settings (an unknown one is an error).
    With several, each method takes the settings it has, and a setting that none of
    them has is an error: ``naive`` and ``kd-replay`` can share ``mem_size=200``,
    which only ``kd-replay`` uses.
    """
    settings = dict(settings or {})
    if len(methods) > 1:
        defaults = {method: resolve_method_args(method) for method in methods}
        unknown = sorted(set(settings) - set().union(*defaults.values()))
        if unknown:
            raise ValueError(f"no method among {list(methods)} has the setting(s) {unknown}")
    configs = []
    for method in methods:
        args = settings if len(methods) == 1 else {k: v for k, v in settings.items() if k in defaults[method]}
        for seed in seeds:
            configs.append(RunConfig(stream=stream, method=method, seed=int(seed), method_args=args, **common))
    return configs


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed - {"stream"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
