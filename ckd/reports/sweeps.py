"""Reading a temperature × alpha sweep: one row per setting, the recommendation, a Markdown table.

Needs only the result JSONs; building and running a sweep is :mod:`ckd.benchmarking.sweep`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["SWEPT_DIAGNOSTICS", "format_sweep", "recommend", "summarize_sweep", "weight_key"]


# Diagnostics averaged over the experiences that had a teacher (1 … N−1).
SWEPT_DIAGNOSTICS = ("agreement", "kl", "teacher_correct_accuracy", "teacher_wrong_accuracy")


def weight_key(method_args: Mapping[str, Any]) -> str:
    """The method setting ``alpha`` sweeps, from a method's settings:
    ``alpha``, or ``current_alpha`` for a method without a replay term (``kd-lwf``)."""
    for key in ("alpha", "current_alpha"):
        if key in method_args:
            return key
    raise ValueError(f"no alpha to sweep among the settings {sorted(method_args)} (the method does not distil)")


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
