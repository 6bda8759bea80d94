"""Aggregate per-run result JSONs into mean ± std tables over seeds.

A result JSON is one run (one stream, method, config and seed) as written by
the benchmark runner; it is recognised by its ``accuracy_matrix`` key. Runs
are grouped into settings (see :func:`setting_label`) and summarised with the
sample standard deviation over seeds (``ddof=1``; ``0.0`` for a single seed).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ckd.common.files import write_text_atomic
from ckd.reports.metrics import compute_metrics

__all__ = [
    "Setting",
    "RATE_METRICS",
    "COST_METRICS",
    "setting_label",
    "setting_of",
    "group_runs",
    "load_results",
    "summarize",
    "format_markdown",
    "write_summary",
]

RATE_METRICS = (
    "final_average_accuracy",
    "average_forgetting",
    "average_forgetting_avalanche",
    "bwt",
)
"""Fractions in [-1, 1], recomputed from ``accuracy_matrix`` with :mod:`ckd.reports.metrics`."""

TRAINED_METRIC = "trained_weights_accuracy"
"""Final average accuracy of the trained weights: the ``trained_weights`` matrix of a run
scored with an EMA of its weights, else the run's own ``accuracy_matrix``, so every method
is shown both ways when its runs were EMA-scored."""

COST_METRICS = ("wall_time_s", "peak_cpu_memory_mb", "peak_cuda_memory_mb")
"""Read as stored; ``peak_cuda_memory_mb`` is summarised only if some run reports it."""

_HEADERS = {
    "final_average_accuracy": "ACC (%)",
    "average_forgetting": "forgetting (%)",
    "average_forgetting_avalanche": "forgetting, Avalanche (%)",
    "bwt": "BWT (%)",
    TRAINED_METRIC: "ACC, trained weights (%)",
    "wall_time_s": "wall time (s)",
    "peak_cpu_memory_mb": "peak CPU mem (MB)",
    "peak_cuda_memory_mb": "peak CUDA mem (MB)",
}


class Setting(NamedTuple):
    """What separates one summary row from another; seeds of a setting are averaged."""

    stream: str
    scenario: str
    method: str
    label: str


def setting_label(result: Mapping[str, Any]) -> str:
    """Name of the configuration a run belongs to, so configs of one method stay apart.

    ``result["label"]`` when the run has one; otherwise the method name, suffixed
    with ``@<mem_size>`` when ``result["config"]`` has a non-null ``mem_size``
    (``"kd-replay@500"``); otherwise the bare method name (``"naive"``).
    """
    label = result.get("label")
    if label:
        return str(label)
    method = str(result["method"])
    mem_size = (result.get("config") or {}).get("mem_size")
    return method if mem_size is None else f"{method}@{mem_size}"


def setting_of(result: Mapping[str, Any]) -> Setting:
    """The :class:`Setting` of one run; a missing ``scenario`` reads as ``""``."""
    for key in ("stream", "method"):
        if key not in result:
            raise ValueError(f"result JSON has no {key!r} field: keys are {sorted(result)}")
    return Setting(
        stream=str(result["stream"]),
        scenario=str(result.get("scenario") or ""),
        method=str(result["method"]),
        label=setting_label(result),
    )


def _natural_key(text: str) -> tuple[Any, ...]:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _setting_key(setting: Setting) -> tuple[Any, ...]:
    return (setting.stream, setting.scenario, setting.method, _natural_key(setting.label))


def group_runs(results: Iterable[Mapping[str, Any]]) -> dict[Setting, list[Mapping[str, Any]]]:
    """Runs grouped by :class:`Setting`, settings sorted (``@200`` before ``@1000``), runs by seed.

    Raises ``ValueError`` when one setting holds two runs with the same seed,
    which would otherwise be counted twice.
    """
    groups: dict[Setting, list[Mapping[str, Any]]] = {}
    for result in results:
        groups.setdefault(setting_of(result), []).append(result)
    for setting, runs in groups.items():
        seeds = [run.get("seed") for run in runs]
        repeated = sorted({str(s) for s in seeds if s is not None and seeds.count(s) > 1})
        if repeated:
            raise ValueError(
                f"setting {setting.label!r} on {setting.stream!r} has several runs with "
                f"seed {', '.join(repeated)}: remove the duplicates or give them a 'label'"
            )
        runs.sort(key=lambda run: (run.get("seed") is None, run.get("seed") or 0))
    return {setting: groups[setting] for setting in sorted(groups, key=_setting_key)}


def load_results(results_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every result JSON under ``results_dir`` (recursive), ordered by relative path.

    JSON files without an ``accuracy_matrix`` key (configs, summaries) are
    skipped; a file that is not valid JSON raises ``ValueError`` naming it.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"results directory not found: {root}")
    results: list[dict[str, Any]] = []
    for path in sorted(root.rglob("*.json"), key=lambda p: p.relative_to(root).as_posix()):
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        if isinstance(data, dict) and "accuracy_matrix" in data:
            results.append(data)
    return results


def _run_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    try:
        return compute_metrics(result["accuracy_matrix"])
    except ValueError as err:
        raise ValueError(
            f"run {result.get('method')!r} seed {result.get('seed')!r} on "
            f"{result.get('stream')!r}: {err}"
        ) from None


def _trained_weights_accuracy(result: Mapping[str, Any]) -> float:
    trained = result.get("trained_weights")
    matrix = trained["accuracy_matrix"] if trained else result["accuracy_matrix"]
    return compute_metrics(matrix)["final_average_accuracy"]


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample std (``ddof=1``, ``0.0`` for one value) of the non-null values."""
    present = np.array([v for v in values if v is not None], dtype=np.float64)
    if present.size == 0:
        return None, None
    std = float(present.std(ddof=1)) if present.size > 1 else 0.0
    return float(present.mean()), std


def summarize(results: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per :class:`Setting` with mean and sample std (``ddof=1``) over its seeds.

    Row keys: ``stream``, ``scenario``, ``method``, ``label``, ``n_seeds``,
    ``seeds`` and ``<metric>_mean`` / ``<metric>_std`` for every metric in
    :data:`RATE_METRICS` (fractions, recomputed from ``accuracy_matrix`` so every
    row uses the definitions of :mod:`ckd.reports.metrics`) and :data:`COST_METRICS`
    (seconds, MB; ``peak_cuda_memory_mb`` only when some run reports it). A cost
    that some seeds do not report is averaged over those that do; ``None`` if none do.
    """
    groups = group_runs(results)
    all_runs = [run for runs in groups.values() for run in runs]
    costs = [
        m for m in COST_METRICS
        if m != "peak_cuda_memory_mb" or any(run.get(m) is not None for run in all_runs)
    ]
    rows: list[dict[str, Any]] = []
    for setting, runs in groups.items():
        row: dict[str, Any] = {
            **setting._asdict(),
            "n_seeds": len(runs),
            "seeds": [run.get("seed") for run in runs],
        }
        per_run = [_run_metrics(run) for run in runs]
        for metric in RATE_METRICS:
            row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std([m[metric] for m in per_run])
        row["scored_model"] = "/".join(sorted({str(run.get("scored_model") or "model") for run in runs}))
        if any(run.get("trained_weights") for run in all_runs):
            trained = [_trained_weights_accuracy(run) for run in runs]
            row[f"{TRAINED_METRIC}_mean"], row[f"{TRAINED_METRIC}_std"] = _mean_std(trained)
        for metric in costs:
            row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std([run.get(metric) for run in runs])
        rows.append(row)
    return rows


def _metrics_in(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    metrics = (*RATE_METRICS, TRAINED_METRIC, *COST_METRICS)
    return [m for m in metrics if any(f"{m}_mean" in row for row in rows)]


def _cell(row: Mapping[str, Any], metric: str) -> str:
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if metric in RATE_METRICS or metric == TRAINED_METRIC:
        return f"{100 * mean:.2f} ± {100 * std:.2f}"
    if metric == "wall_time_s":
        return f"{mean:.1f} ± {std:.1f}"
    return f"{mean:.0f} ± {std:.0f}"


def format_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of :func:`summarize` rows, cells as ``mean ± std`` over seeds.

    Accuracy, forgetting and BWT are in percent with 2 decimals, wall time in
    seconds, memory in MB. A note under the table states the definitions.
    """
    if not rows:
        raise ValueError("no summary rows to format: the results directory held no result JSONs")
    metrics = _metrics_in(rows)
    scored = any(row.get("scored_model", "model") != "model" for row in rows)
    header = ["stream", "scenario", "method", "setting", *(["scored"] if scored else []), "seeds",
              *(_HEADERS[m] for m in metrics)]
    n_text = 5 if scored else 4
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] * n_text + ["---:"] * (len(header) - n_text)) + " |",
    ]
    for row in rows:
        cells = [
            str(row["stream"]),
            str(row["scenario"]) or "–",
            str(row["method"]),
            str(row["label"]),
            *([str(row.get("scored_model", "model"))] if scored else []),
            str(row["n_seeds"]),
            *(_cell(row, m) for m in metrics),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "mean ± sample std (ddof=1) over seeds. ACC: final average accuracy of the scored model "
        "(scored: ema, an exponential moving average of the weights; model, the trained weights). "
        "ACC, trained weights: the same runs scored with their trained weights. "
        "forgetting: best-ever minus final accuracy (Mammoth/FACIL/PyCIL). "
        "forgetting, Avalanche: right-after-training minus final. "
        "BWT: final minus right-after-training (Lopez-Paz & Ranzato, 2017).",
    ]
    return "\n".join(lines) + "\n"


def _format_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    metrics = _metrics_in(rows)
    columns = ["stream", "scenario", "method", "label", "scored_model", "n_seeds", "seeds"]
    columns += [f"{m}_{stat}" for m in metrics for stat in ("mean", "std")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        record = {**row, "seeds": " ".join(str(s) for s in row["seeds"])}
        writer.writerow(["" if record.get(c) is None else record[c] for c in columns])
    return buffer.getvalue()


def write_summary(
    results: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike[str]
) -> tuple[Path, Path]:
    """Write ``summary.md`` and ``summary.csv`` into ``out_dir``; return their paths.

    The CSV has one numeric column per statistic (``<metric>_mean``,
    ``<metric>_std``), in raw units (fractions, seconds, MB), empty when unknown.
    Each file is replaced atomically, so a reader never sees half a table.
    """
    rows = summarize(results)
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    markdown_path, csv_path = directory / "summary.md", directory / "summary.csv"
    write_text_atomic(markdown_path, format_markdown(rows))
    write_text_atomic(csv_path, _format_csv(rows))
    return markdown_path, csv_path
