"""Temperature × alpha sweeps on a validation split, and the distiller's dilemma.

A too-low temperature makes the student copy the teacher's mistakes (agreement
rises while the student's accuracy on the samples the teacher gets wrong
falls); a too-high one flattens the targets until they say nothing. A sweep
runs one method over a grid of ``temperature`` and ``alpha`` on a validation
split carved from the training data, reads the per-experience diagnostics of
each run, and recommends the setting with the best validation accuracy.

Reading a sweep is :mod:`ckd.reports.sweeps`; building and running one
(:func:`sweep_configs`, :func:`run_sweep`) imports the training stack when called.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckd.benchmarking.scheduling import run_all
from ckd.common.files import write_json_atomic
from ckd.reports.plotting import plot_distillers_dilemma
from ckd.reports.sweeps import recommend, summarize_sweep, weight_key

if TYPE_CHECKING:
    from ckd.benchmarking.run_config import RunConfig
    from ckd.benchmarking.scheduling import RunOutcome, Scheduler

__all__ = ["Sweep", "run_sweep", "sweep_configs"]


def sweep_configs(
    base: RunConfig, temperatures: Sequence[float], alphas: Sequence[float], seeds: Sequence[int]
) -> list[RunConfig]:
    """One run per ``(temperature, alpha, seed)``, labelled ``{name}@T{t}-a{alpha}``.

    ``base`` must evaluate on a validation split (``validation_fraction > 0``):
    choosing a temperature on the test set would report a tuned test number.
    """
    from ckd.benchmarking.methods import resolve_method_args  # imports the training stack: here, not with the module
    from ckd.distillation.losses import check_temperature

    if not base.validation_fraction > 0:
        raise ValueError(
            "a sweep chooses settings, so it must evaluate on a validation split: "
            f"validation_fraction must be > 0, got {base.validation_fraction}"
        )
    defaults = resolve_method_args(base.method)
    if "temperature" not in defaults:
        raise ValueError(f"method {base.method!r} has no temperature to sweep")
    key = weight_key(defaults)
    if not temperatures or not alphas or not seeds:
        raise ValueError("a sweep needs at least one temperature, one alpha and one seed")
    for t in temperatures:
        check_temperature(t)
    for a in alphas:
        if not a >= 0:
            raise ValueError(f"alpha must be >= 0, got {a}")
    configs = []
    for t in temperatures:
        for a in alphas:
            args = {**base.method_args, "temperature": float(t), key: float(a)}
            for seed in seeds:
                configs.append(dataclasses.replace(
                    base, seed=int(seed), label=f"{base.name}@T{t:g}-a{a:g}", method_args=args,
                ))
    return configs


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A finished sweep: its rows (:func:`summarize_sweep`), the recommended row, and
    the files written (``sweep.json`` and the distiller's-dilemma figure)."""

    rows: list[dict[str, Any]]
    recommended: Mapping[str, Any]
    summary_path: Path
    figure_path: Path


def run_sweep(
    base: RunConfig,
    temperatures: Sequence[float],
    alphas: Sequence[float],
    seeds: Sequence[int],
    *,
    out_dir: str | os.PathLike,
    scheduler: Scheduler,
    fmt: str = "png",
    on_outcome: Callable[[RunOutcome], None] | None = None,
) -> Sweep:
    """Run the grid of :func:`sweep_configs` with ``scheduler`` into ``out_dir``, then write
    ``sweep.json`` (rows and recommendation) and ``distillers_dilemma.<fmt>`` there.

    ``on_outcome`` sees each run as it finishes. When a run fails, the others still
    run and :class:`ckd.benchmarking.scheduling.RunsFailed` is raised without a summary: a
    recommendation from part of the grid would mislead. Runs that an early-stopping
    scheduler ended (``ckd.benchmarking.tune_scheduler.TuneScheduler``) are left out of the rows.
    """
    configs = sweep_configs(base, temperatures, alphas, seeds)
    outcomes = run_all(scheduler, configs, out_dir, on_outcome)
    results = [json.loads(o.path.read_text()) for o in outcomes if not o.stopped]
    rows = summarize_sweep(results)
    best = recommend(rows)
    out = Path(out_dir)
    summary_path = write_json_atomic(out / "sweep.json", {
        "stream": base.stream, "method": base.method, "validation_fraction": base.validation_fraction,
        "rows": rows, "recommended": {"temperature": best["temperature"], "alpha": best["alpha"]},
    })
    figure = plot_distillers_dilemma(results, out / f"distillers_dilemma.{fmt}")
    return Sweep(rows, best, summary_path, figure)
