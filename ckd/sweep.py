"""Temperature × alpha sweeps on a validation split, and the distiller's dilemma.

A too-low temperature makes the student copy the teacher's mistakes (agreement
rises while the student's accuracy on the samples the teacher gets wrong
falls); a too-high one flattens the targets until they say nothing. A sweep
runs one method over a grid of ``temperature`` and ``alpha`` on a validation
split carved from the training data, reads the per-experience diagnostics of
each run, and recommends the setting with the best validation accuracy.

Reading a sweep (:func:`summarize_sweep`, :func:`recommend`, :func:`format_sweep`)
needs only the result JSONs; building and running one (:func:`sweep_configs`,
:func:`run_sweep`) imports the training stack when called.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ckd.files import write_json_atomic

if TYPE_CHECKING:
    from ckd.runner import RunConfig
    from ckd.scheduling import RunOutcome, Scheduler

__all__ = [
    "SWEPT_DIAGNOSTICS",
    "Sweep",
    "format_sweep",
    "recommend",
    "run_sweep",
    "summarize_sweep",
    "sweep_configs",
    "weight_key",
]

# Diagnostics averaged over the experiences that had a teacher (1 … N−1).
SWEPT_DIAGNOSTICS = ("agreement", "kl", "teacher_correct_accuracy", "teacher_wrong_accuracy")


def weight_key(method_args: Mapping[str, Any]) -> str:
    """The method setting ``alpha`` sweeps, from a method's settings:
    ``alpha``, or ``current_alpha`` for a method without a replay term (``kd-lwf``)."""
    for key in ("alpha", "current_alpha"):
        if key in method_args:
            return key
    raise ValueError(f"no alpha to sweep among the settings {sorted(method_args)} (the method does not distil)")


def sweep_configs(
    base: RunConfig, temperatures: Sequence[float], alphas: Sequence[float], seeds: Sequence[int]
) -> list[RunConfig]:
    """One run per ``(temperature, alpha, seed)``, labelled ``{name}@T{t}-a{alpha}``.

    ``base`` must evaluate on a validation split (``validation_fraction > 0``):
    choosing a temperature on the test set would report a tuned test number.
    """
    from ckd.losses import check_temperature
    from ckd.methods import resolve_method_args

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


def _run_diagnostics(result: Mapping[str, Any]) -> dict[str, float]:
    records = [r for r in (result.get("diagnostics") or []) if r]
    out = {}
    for name in SWEPT_DIAGNOSTICS:
        values = [r[name] for r in records if r.get(name) is not None]
        out[name] = float(np.mean(values)) if values else math.nan
    return out


def summarize_sweep(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per ``(temperature, alpha)``: mean and std over seeds of the final
    validation accuracy, and the means of :data:`SWEPT_DIAGNOSTICS`, sorted by T then alpha."""
    groups: dict[tuple[float, float], list[Mapping[str, Any]]] = {}
    for result in results:
        args = result["config"]["method_args"]
        key = weight_key(args)
        groups.setdefault((float(args["temperature"]), float(args[key])), []).append(result)
    rows = []
    for (t, a), runs in sorted(groups.items()):
        accuracy = [100 * r["final_average_accuracy"] for r in runs]
        diagnostics = [_run_diagnostics(r) for r in runs]
        row: dict[str, Any] = {
            "temperature": t,
            "alpha": a,
            "seeds": sorted(r["seed"] for r in runs),
            "accuracy": float(np.mean(accuracy)),
            "accuracy_std": float(np.std(accuracy, ddof=1)) if len(runs) > 1 else 0.0,
            "forgetting": float(np.mean([100 * r["average_forgetting"] for r in runs])),
        }
        for name in SWEPT_DIAGNOSTICS:
            values = [d[name] for d in diagnostics if not math.isnan(d[name])]
            row[name] = float(np.mean(values)) if values else None
        rows.append(row)
    return rows


def recommend(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The row with the best mean validation accuracy (the lower temperature on a tie)."""
    if not rows:
        raise ValueError("no sweep results to recommend from")
    return max(rows, key=lambda r: (r["accuracy"], -r["temperature"]))


def format_sweep(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of the sweep, the recommended row marked."""
    best = recommend(rows)

    def pct(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.1f}"

    lines = [
        "| T | α | val. ACC (%) | forgetting (%) | agreement (%) | acc. where teacher right (%) | acc. where teacher wrong (%) | KL |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        mark = " **←**" if r is best else ""
        kl = "–" if r["kl"] is None else f"{r['kl']:.3f}"
        lines.append(
            f"| {r['temperature']:g} | {r['alpha']:g} | {r['accuracy']:.2f} ± {r['accuracy_std']:.2f}{mark} | "
            f"{r['forgetting']:.2f} | {pct(r['agreement'])} | {pct(r['teacher_correct_accuracy'])} | "
            f"{pct(r['teacher_wrong_accuracy'])} | {kl} |"
        )
    return "\n".join(lines)


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
    run and :class:`ckd.scheduling.RunsFailed` is raised without a summary: a
    recommendation from part of the grid would mislead. Runs that an early-stopping
    scheduler ended (``ckd.ray_sweep.TuneScheduler``) are left out of the rows.
    """
    from ckd.plotting import plot_distillers_dilemma
    from ckd.scheduling import run_all

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
