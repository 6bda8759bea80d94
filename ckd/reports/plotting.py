"""Figures of forgetting from result JSONs: curves, accuracy matrices, method bars.

Figures are built with :class:`matplotlib.figure.Figure` directly, never
through ``pyplot``: no GUI backend is touched (headless by construction), no
global figure registry holds them, and each figure is freed when its function
is freed once its caller drops it. Each ``*_figure`` function builds one figure
of one stream (with ``stream=None`` the results must hold exactly one) and the
``plot_*`` function of the same name saves it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ckd.reports.metrics import accuracy_matrix
from ckd.reports.summary import Setting, group_runs, load_results, setting_label, summarize
from ckd.reports.sweeps import recommend, summarize_sweep

__all__ = [
    "DPI", "FORMATS", "METHOD_COLORS", "method_color", "figure_size",
    "forgetting_curves_figure", "accuracy_heatmaps_figure", "method_comparison_figure", "distillers_dilemma_figure",
    "plot_forgetting_curves", "plot_accuracy_heatmaps", "plot_method_comparison", "plot_distillers_dilemma",
    "plot_all",
]

DPI = 150
FORMATS = ("png", "pdf", "svg")

METHOD_COLORS: dict[str, str] = {
    "naive": "#7f7f7f",
    "joint": "#222222",
    "replay": "#1f77b4",
    "lwf": "#ff7f0e",
    "ewc": "#bcbd22",
    "der": "#8c564b",
    "der++": "#c49c94",
    "kd-replay": "#d62728",
    "kd-replay-cached": "#ff9896",
    "kd-feature": "#2ca02c",
    "kd-relation": "#98df8a",
    "kd-lwf": "#9467bd",
    "kd-replay-lwf": "#e377c2",
    "kd-multi-teacher": "#17becf",
}
"""One colour per known method, the same in every figure."""

_FALLBACK_COLORS = (
    "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173",
    "#aec7e8", "#ffbb78", "#c5b0d5", "#dbdb8d", "#9edae5",
)
_METADATA = {"png": {}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}
_CURVE_PANEL = (4.2, 3.2)
_BAR_WIDTH_PER_SETTING = 0.55


def method_color(method: str) -> str:
    """Hex colour of ``method``: from :data:`METHOD_COLORS`, else picked by a stable hash of the name."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    digest = int(hashlib.md5(method.encode("utf-8")).hexdigest()[:8], 16)
    return _FALLBACK_COLORS[digest % len(_FALLBACK_COLORS)]


def _grid(n_panels: int) -> tuple[int, int]:
    cols = min(n_panels, 3)
    return math.ceil(n_panels / cols), cols


def _legend_columns(n_experiences: int, panel_columns: int) -> int:
    """Legend entries per row: as many as fit the figure's width (about 1.8 in each)."""
    fit = max(1, int(panel_columns * _CURVE_PANEL[0] / 1.8))
    return min(n_experiences + 1, 6, fit)


def figure_size(kind: str, n_panels: int, n_experiences: int) -> tuple[float, float]:
    """Figure ``(width, height)`` in inches for ``kind`` with ``n_panels`` settings.

    ``kind`` is ``"forgetting_curves"``, ``"accuracy_matrix"`` or ``"comparison"``;
    ``n_experiences`` is the largest ``T`` among the settings. Pixels are this times :data:`DPI`.
    """
    if n_panels < 1:
        raise ValueError(f"n_panels must be >= 1, got {n_panels}")
    if n_experiences < 1:
        raise ValueError(f"n_experiences must be >= 1, got {n_experiences}")
    rows, cols = _grid(n_panels)
    if kind == "forgetting_curves":
        legend_rows = math.ceil((n_experiences + 1) / _legend_columns(n_experiences, cols))
        width, height = _CURVE_PANEL
        return cols * width, rows * height + 0.5 + 0.25 * legend_rows
    if kind == "accuracy_matrix":
        side = max(3.2, 0.4 * n_experiences + 1.2)
        return cols * side + 1.0, rows * (side + 0.4) + 0.4
    if kind == "comparison":
        return max(7.0, 2 * (_BAR_WIDTH_PER_SETTING * n_panels + 1.3)), 4.2
    raise ValueError(
        f"kind must be 'forgetting_curves', 'accuracy_matrix' or 'comparison', got {kind!r}"
    )


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"figure path must end in .png, .pdf or .svg, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format=fmt, dpi=DPI, metadata=_METADATA[fmt])
    return out


def _stream_groups(
    results: Iterable[Mapping[str, Any]], stream: str | None
) -> tuple[str, dict[Setting, list[Mapping[str, Any]]]]:
    """The one stream to draw and its runs grouped by setting."""
    runs = list(results)
    streams = sorted({str(run.get("stream")) for run in runs})
    if not streams:
        raise ValueError("no results to plot")
    if stream is None:
        if len(streams) > 1:
            raise ValueError(
                f"results hold several streams ({', '.join(streams)}): choose one with stream= (--stream)"
            )
        stream = streams[0]
    if stream not in streams:
        raise ValueError(f"stream {stream!r} not in the results; they hold {', '.join(streams)}")
    return stream, group_runs(run for run in runs if str(run.get("stream")) == stream)


def _matrices(setting: Setting, runs: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Accuracy matrices of a setting's seeds, ``(S, T, T)`` fractions."""
    matrices = [accuracy_matrix(run["accuracy_matrix"]) for run in runs]
    sizes = sorted({m.shape[0] for m in matrices})
    if len(sizes) > 1:
        raise ValueError(
            f"seeds of {setting.label!r} on {setting.stream!r} have different numbers of "
            f"experiences: {sizes}"
        )
    return np.stack(matrices)


def _panel_title(setting: Setting, n_seeds: int, show_scenario: bool) -> str:
    scenario = f", {setting.scenario}" if show_scenario and setting.scenario else ""
    return f"{setting.label}{scenario} (n={n_seeds})"


def _show_scenario(groups: Mapping[Setting, Any]) -> bool:
    return len({setting.scenario for setting in groups}) > 1


def _panels(fig: Figure, n_panels: int, **kwargs: Any) -> list[Axes]:
    rows, cols = _grid(n_panels)
    axes = list(fig.subplots(rows, cols, squeeze=False, **kwargs).flat)
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return axes[:n_panels]


def _ticks(n_experiences: int) -> range:
    return range(0, n_experiences, math.ceil(n_experiences / 10))


def _experience_colors(n_experiences: int) -> list[Any]:
    if n_experiences <= 10:
        return [colormaps["tab10"](j) for j in range(n_experiences)]
    return [colormaps["viridis"](x) for x in np.linspace(0.0, 0.92, n_experiences)]


def _experience_names(runs: Sequence[Mapping[str, Any]], n_experiences: int) -> list[str]:
    """``exp j`` plus its classes when every run agrees on them and they are few."""
    names = [f"exp {j}" for j in range(n_experiences)]
    classes = [run.get("experience_classes") for run in runs]
    if not classes or classes[0] is None or any(c != classes[0] for c in classes):
        return names
    if len(classes[0]) != n_experiences or any(len(c) > 4 for c in classes[0]):
        return names
    return [f"{name} (classes {', '.join(map(str, c))})" for name, c in zip(names, classes[0])]


def _shared_curve(
    setting: Setting, runs: Sequence[Mapping[str, Any]], n_experiences: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(iteration (n,), experience (n,), accuracy (S, n, T))`` when all seeds share one curve grid."""
    curves = [run.get("curve") for run in runs]
    if any(not curve for curve in curves):
        return None
    iterations = [np.asarray(c["iteration"], dtype=np.float64) for c in curves]
    experiences = [np.asarray(c["experience"], dtype=np.int64) for c in curves]
    if any(
        it.shape != iterations[0].shape or not np.array_equal(it, iterations[0])
        or not np.array_equal(ex, experiences[0])
        for it, ex in zip(iterations, experiences)
    ):
        return None
    accuracy = np.stack([np.asarray(c["accuracy"], dtype=np.float64) for c in curves])
    expected = (len(runs), iterations[0].size, n_experiences)
    if accuracy.shape != expected:
        raise ValueError(
            f"curve of {setting.label!r} on {setting.stream!r} must hold {n_experiences} "
            f"accuracies per point (iteration, T), got shape {accuracy.shape[1:]}"
        )
    return iterations[0], experiences[0], accuracy


def _band(ax: Axes, x: np.ndarray, values: np.ndarray, color: Any, marker: str | None) -> None:
    """Mean line of ``values (S, n)`` in percent with a ± sample-std band when ``S > 1``."""
    percent = 100.0 * values
    mean = percent.mean(axis=0)
    ax.plot(x, mean, color=color, marker=marker, markersize=3.5, linewidth=1.6)
    if percent.shape[0] > 1:
        std = percent.std(axis=0, ddof=1)
        ax.fill_between(
            x, np.clip(mean - std, 0, 100), np.clip(mean + std, 0, 100),
            color=color, alpha=0.2, linewidth=0,
        )


def forgetting_curves_figure(results: Iterable[Mapping[str, Any]], stream: str | None = None) -> Figure:
    """Accuracy on each test experience from the moment it is trained, one panel per setting.

    x is the training experience index (``R[i][j]`` for ``i >= j``), or the
    iteration when every seed of the setting carries a ``curve`` on the same
    grid (points from the start of training experience ``j``). Lines are the
    mean over seeds in percent, bands ± sample std; the y axis is 0-100 in
    every panel.
    """
    stream, groups = _stream_groups(results, stream)
    stacks = {setting: _matrices(setting, runs) for setting, runs in groups.items()}
    n_experiences = max(stack.shape[1] for stack in stacks.values())
    colors = _experience_colors(n_experiences)
    fig = Figure(figsize=figure_size("forgetting_curves", len(groups), n_experiences), layout="constrained")
    axes = _panels(fig, len(groups), sharey=True)
    show_scenario = _show_scenario(groups)
    for ax, (setting, runs) in zip(axes, groups.items()):
        stack = stacks[setting]
        t = stack.shape[1]
        curve = _shared_curve(setting, runs, t)
        if curve is not None:
            iteration, experience, accuracy = curve
            for j in range(t):
                trained = experience >= j
                _band(ax, iteration[trained], accuracy[:, trained, j], colors[j], None)
            for start in iteration[1:][np.diff(experience) != 0]:
                ax.axvline(start, color="0.8", linewidth=0.8, zorder=0)
            ax.set_xlabel("training iteration")
        else:
            for j in range(t):
                _band(ax, np.arange(j, t), stack[:, j:, j], colors[j], "o")
            ax.set_xticks(_ticks(t))
            ax.set_xlim(-0.3, t - 0.7)
            ax.set_xlabel("after training experience")
        ax.set_title(_panel_title(setting, len(runs), show_scenario), fontsize=10)
        ax.grid(True, color="0.92")
    axes[0].set_ylim(0, 102)
    axes[0].set_yticks(range(0, 101, 20))
    for ax in axes:
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("accuracy (%)")
    names = _experience_names([run for runs in groups.values() for run in runs], n_experiences)
    handles: list[Any] = [
        Line2D([], [], color=colors[j], marker="o", markersize=3.5, label=names[j])
        for j in range(n_experiences)
    ]
    handles.append(Patch(color="0.5", alpha=0.3, label="± std over seeds"))
    fig.legend(
        handles=handles, loc="outside lower center",
        ncols=_legend_columns(n_experiences, _grid(len(groups))[1]), fontsize=8, frameon=False,
        title="test experience", title_fontsize=8,
    )
    fig.suptitle(f"{stream}: accuracy on each test experience as training advances")
    return fig


def accuracy_heatmaps_figure(results: Iterable[Mapping[str, Any]], stream: str | None = None) -> Figure:
    """The seed-mean accuracy matrix ``R[i][j]`` in percent, one annotated heatmap per setting.

    Rows are the training experience just finished (``i``), columns the test
    experience (``j``); one colorbar (0-100 %) serves all panels.
    """
    stream, groups = _stream_groups(results, stream)
    stacks = {setting: _matrices(setting, runs) for setting, runs in groups.items()}
    n_experiences = max(stack.shape[1] for stack in stacks.values())
    fig = Figure(figsize=figure_size("accuracy_matrix", len(groups), n_experiences), layout="constrained")
    axes = _panels(fig, len(groups))
    cmap = colormaps["viridis"]
    show_scenario = _show_scenario(groups)
    image = None
    for ax, (setting, runs) in zip(axes, groups.items()):
        mean = 100.0 * stacks[setting].mean(axis=0)
        t = mean.shape[0]
        image = ax.imshow(mean, cmap=cmap, vmin=0, vmax=100)
        fontsize = max(5.0, min(9.0, 48.0 / t))
        for (i, j), value in np.ndenumerate(mean):
            ax.text(
                j, i, f"{value:.1f}" if t <= 6 else f"{value:.0f}",
                ha="center", va="center", fontsize=fontsize,
                color="white" if value < 60 else "black",
            )
        ax.set_xticks(_ticks(t))
        ax.set_yticks(_ticks(t))
        ax.set_xlabel("test experience")
        ax.set_ylabel("after training experience")
        ax.set_title(_panel_title(setting, len(runs), show_scenario), fontsize=10)
    fig.colorbar(image, ax=axes, label="accuracy (%)", shrink=0.85)
    fig.suptitle(f"{stream}: accuracy matrix, mean over seeds")
    return fig


def method_comparison_figure(results: Iterable[Mapping[str, Any]], stream: str | None = None) -> Figure:
    """Bars of final average accuracy and average forgetting (best-ever − final) per setting.

    Two panels, values in percent, error bars ± sample std over seeds, bars
    coloured by method (:func:`method_color`).
    """
    stream, groups = _stream_groups(results, stream)
    rows = summarize(run for runs in groups.values() for run in runs)
    show_scenario = _show_scenario(groups)
    labels = [
        f"{row['label']}\n{row['scenario']}" if show_scenario and row["scenario"] else row["label"]
        for row in rows
    ]
    colors = [method_color(row["method"]) for row in rows]
    fig = Figure(figsize=figure_size("comparison", len(rows), 1), layout="constrained")
    axes = _panels(fig, 2)
    panels = (
        ("final_average_accuracy", "final average accuracy", "accuracy (%)"),
        ("average_forgetting", "average forgetting (best-ever − final)", "forgetting (%)"),
    )
    x = np.arange(len(rows))
    for ax, (metric, title, ylabel) in zip(axes, panels):
        means = np.array([100.0 * row[f"{metric}_mean"] for row in rows])
        stds = np.array([100.0 * row[f"{metric}_std"] for row in rows])
        ax.bar(x, means, yerr=stds, color=colors, edgecolor="0.2", linewidth=0.5, capsize=3,
               error_kw={"elinewidth": 0.9})
        ax.set_xticks(x, labels, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.axhline(0, color="0.2", linewidth=0.8)
        ax.grid(True, axis="y", color="0.92")
        ax.set_axisbelow(True)
    axes[0].set_ylim(0, 100)
    seeds = sorted({row["n_seeds"] for row in rows})
    n = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    fig.suptitle(f"{stream}: mean ± std over seeds (n={n})")
    return fig


def distillers_dilemma_figure(results: Iterable[Mapping[str, Any]], stream: str | None = None) -> Figure:
    """The distiller's dilemma of a temperature sweep (``ckd sweep``), against T (log axis):
    final validation accuracy, student–teacher agreement, and the student's accuracy
    on the held-out samples the teacher gets right and wrong; one line per alpha,
    error bars ± std over seeds, the recommended setting marked."""
    stream, groups = _stream_groups(results, stream)
    runs = [run for group in groups.values() for run in group]
    methods = sorted({run["method"] for run in runs})
    if len(methods) != 1:
        raise ValueError(f"a sweep figure draws one method, the results hold {methods}")
    rows = summarize_sweep(runs)
    best = recommend(rows)
    alphas = sorted({row["alpha"] for row in rows})
    fig = Figure(figsize=(3 * _CURVE_PANEL[0], _CURVE_PANEL[1] + 0.4), layout="constrained")
    axes = _panels(fig, 3)
    colors = colormaps["viridis"](np.linspace(0.1, 0.85, len(alphas)))
    for alpha, color in zip(alphas, colors):
        line = [row for row in rows if row["alpha"] == alpha]
        t = np.array([row["temperature"] for row in line])

        def values(key: str, scale: float = 100.0, line: list = line) -> np.ndarray:
            return np.array([np.nan if row[key] is None else scale * row[key] for row in line])

        axes[0].errorbar(t, values("accuracy", 1.0), yerr=values("accuracy_std", 1.0), color=color,
                         marker="o", capsize=3, label=f"α = {alpha:g}")
        axes[1].plot(t, values("agreement"), color=color, marker="o")
        axes[2].plot(t, values("teacher_wrong_accuracy"), color=color, marker="o")
        axes[2].plot(t, values("teacher_correct_accuracy"), color=color, marker="s", linestyle=":")
    titles = (
        ("final validation accuracy", "accuracy (%)"),
        ("student–teacher agreement (old experiences)", "agreement (%)"),
        ("student accuracy: teacher wrong (—), right (···)", "accuracy (%)"),
    )
    for ax, (title, ylabel) in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("temperature T")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(ylabel)
        ax.axvline(best["temperature"], color="0.4", linestyle="--", linewidth=0.8)
        ax.grid(True, color="0.92")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"{stream}, {methods[0]}: recommended T = {best['temperature']:g}, α = {best['alpha']:g} "
        f"({best['accuracy']:.2f}% on validation)"
    )
    return fig


def plot_forgetting_curves(
    results: Iterable[Mapping[str, Any]], path: str | os.PathLike[str], stream: str | None = None
) -> Path:
    """:func:`forgetting_curves_figure` saved to ``path``, in the format of its suffix (png, pdf, svg)."""
    return _save(forgetting_curves_figure(results, stream), path)


def plot_accuracy_heatmaps(
    results: Iterable[Mapping[str, Any]], path: str | os.PathLike[str], stream: str | None = None
) -> Path:
    """:func:`accuracy_heatmaps_figure` saved to ``path``, in the format of its suffix (png, pdf, svg)."""
    return _save(accuracy_heatmaps_figure(results, stream), path)


def plot_method_comparison(
    results: Iterable[Mapping[str, Any]], path: str | os.PathLike[str], stream: str | None = None
) -> Path:
    """:func:`method_comparison_figure` saved to ``path``, in the format of its suffix (png, pdf, svg)."""
    return _save(method_comparison_figure(results, stream), path)


def plot_distillers_dilemma(
    results: Iterable[Mapping[str, Any]], path: str | os.PathLike[str], stream: str | None = None
) -> Path:
    """:func:`distillers_dilemma_figure` saved to ``path``, in the format of its suffix (png, pdf, svg)."""
    return _save(distillers_dilemma_figure(results, stream), path)


def _file_stem(stream: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stream)


def plot_all(
    results_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    fmt: str = "png",
    labels: Sequence[str] | None = None,
) -> list[Path]:
    """All three figures for every stream under ``results_dir``; returns the paths written.

    Files are ``<stream>_forgetting_curves.<fmt>``, ``<stream>_accuracy_matrix.<fmt>``
    and ``<stream>_comparison.<fmt>`` in ``out_dir``; ``fmt`` is png (150 dpi), pdf or svg.
    ``labels``: keep only the settings whose label matches one of these shell-style
    patterns (e.g. ``"*@500"``).
    """
    _check_format(fmt)
    results = load_results(results_dir)
    if labels:
        results = [r for r in results if any(fnmatch.fnmatchcase(setting_label(r), p) for p in labels)]
    if not results:
        raise ValueError(f"no result JSONs (files with an 'accuracy_matrix') under {results_dir}"
                         + (f" matching {list(labels)}" if labels else ""))
    out = Path(out_dir)
    written: list[Path] = []
    for stream in sorted({str(run.get("stream")) for run in results}):
        stem = _file_stem(stream)
        written.append(plot_forgetting_curves(results, out / f"{stem}_forgetting_curves.{fmt}", stream))
        written.append(plot_accuracy_heatmaps(results, out / f"{stem}_accuracy_matrix.{fmt}", stream))
        written.append(plot_method_comparison(results, out / f"{stem}_comparison.{fmt}", stream))
    return written


def figure_main(plot: Callable[..., Path], description: str, argv: Sequence[str] | None = None) -> None:
    """Command line of the single-figure scripts in ``plots/``:
    ``RESULTS_DIR --out FILE.{png,pdf,svg} [--stream S]``."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("results_dir", type=Path, help="directory of result JSONs (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="figure file; its suffix picks png, pdf or svg")
    parser.add_argument("--stream", default=None, help="stream to draw; needed when the results hold several")
    args = parser.parse_args(argv)
    try:
        path = plot(load_results(args.results_dir), args.out, stream=args.stream)
    except (ValueError, NotADirectoryError) as err:
        parser.error(str(err))
    print(path)
