import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.container import BarContainer

from ckd.reports.plotting import (
    DPI,
    METHOD_COLORS,
    accuracy_heatmaps_figure,
    distillers_dilemma_figure,
    figure_size,
    forgetting_curves_figure,
    method_color,
    method_comparison_figure,
    plot_all,
    plot_forgetting_curves,
)
from ckd.reports.summary import load_results

T = 3


def write_runs(root, stream="split-mnist"):
    """2 methods x 2 seeds on one stream; kd-replay also carries an iteration curve."""
    for method, drop in (("naive", 0.4), ("kd-replay", 0.1)):
        for seed in (0, 1):
            R = [[0.0] * T for _ in range(T)]
            for i in range(T):
                for j in range(i + 1):
                    R[i][j] = round(0.95 - drop * (i - j) - 0.01 * seed, 4)
            curve = None
            if method == "kd-replay":
                experience = [0, 0, 1, 1, 2, 2]
                curve = {
                    "iteration": [0, 10, 20, 30, 40, 50],
                    "experience": experience,
                    "accuracy": [[R[e][j] for j in range(T)] for e in experience],
                }
            result = {
                "stream": stream,
                "method": method,
                "seed": seed,
                "scenario": "class-il",
                "config": {"mem_size": 500} if method == "kd-replay" else {},
                "accuracy_matrix": R,
                "experience_classes": [[0, 1], [2, 3], [4, 5]],
                "curve": curve,
                "wall_time_s": 1.0,
                "peak_cpu_memory_mb": 100.0,
            }
            (root / f"{stream}_{method}_{seed}.json").write_text(json.dumps(result))
    return root


@pytest.fixture
def results_dir(tmp_path):
    root = tmp_path / "results"
    root.mkdir()
    return write_runs(root)


def test_plot_all_png_files_have_figsize_times_dpi_pixels(results_dir, tmp_path):
    paths = plot_all(results_dir, tmp_path / "figs")
    assert [p.name for p in paths] == [
        "split-mnist_forgetting_curves.png",
        "split-mnist_accuracy_matrix.png",
        "split-mnist_comparison.png",
    ]
    for path, kind in zip(paths, ("forgetting_curves", "accuracy_matrix", "comparison")):
        assert path.stat().st_size > 0
        height, width = matplotlib.image.imread(path).shape[:2]
        expected_w, expected_h = figure_size(kind, 2, T)
        assert width == pytest.approx(expected_w * DPI, abs=1)
        assert height == pytest.approx(expected_h * DPI, abs=1)


@pytest.mark.parametrize(("fmt", "magic"), [("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_plot_all_vector_formats(results_dir, tmp_path, fmt, magic):
    paths = plot_all(results_dir, tmp_path, fmt=fmt)
    assert len(paths) == 3
    for path in paths:
        assert path.suffix == f".{fmt}"
        assert path.read_bytes().startswith(magic)


def test_bad_format_is_rejected_before_anything_is_written(results_dir, tmp_path):
    with pytest.raises(ValueError, match="'jpg'"):
        plot_all(results_dir, tmp_path / "figs", fmt="jpg")
    assert not (tmp_path / "figs").exists()
    with pytest.raises(ValueError, match="figure.jpg"):
        plot_forgetting_curves(load_results(results_dir), tmp_path / "figure.jpg")


def test_stream_must_be_chosen_when_results_hold_several(results_dir, tmp_path):
    write_runs(results_dir, stream="split-fmnist")
    results = load_results(results_dir)
    with pytest.raises(ValueError, match="split-fmnist, split-mnist"):
        plot_forgetting_curves(results, tmp_path / "f.png")
    with pytest.raises(ValueError, match="'nope'"):
        plot_forgetting_curves(results, tmp_path / "f.png", stream="nope")
    path = plot_forgetting_curves(results, tmp_path / "f.png", stream="split-fmnist")
    assert path.stat().st_size > 0


def test_no_results_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no result JSONs"):
        plot_all(tmp_path, tmp_path / "figs")


def test_method_colors_are_fixed_for_known_and_stable_for_unknown_methods():
    assert method_color("kd-replay") == METHOD_COLORS["kd-replay"] == "#d62728"
    assert len(set(METHOD_COLORS.values())) == len(METHOD_COLORS)
    # An unknown name: md5("my-new-method") starts 89027079, and 0x89027079 mod 10 = 7 picks the 8th fallback colour.
    assert method_color("my-new-method") == "#c5b0d5"
    assert {method_color(m) for m in ("icarl", "gdumb", "agem", "mir")} == {"#8c6d31", "#843c39", "#dbdb8d", "#393b79"}
    assert not {method_color(m) for m in ("my-new-method", "icarl", "gdumb", "agem", "mir")} & set(METHOD_COLORS.values())
    # The same colour in another process, whatever its string-hash seed (hash() would differ).
    code = "from ckd.reports.plotting import method_color; print(method_color('my-new-method'))"
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        assert out.strip() == "#c5b0d5"


def test_figure_size_rejects_unknown_kind():
    with pytest.raises(ValueError, match="'pie'"):
        figure_size("pie", 1, 1)


def test_plot_scripts_write_the_figure_named_on_the_command_line(results_dir, tmp_path):
    root = Path(__file__).resolve().parent.parent
    for script in ("forgetting_curves", "accuracy_heatmap", "method_comparison"):
        out = tmp_path / f"{script}.svg"
        done = subprocess.run(
            [sys.executable, str(root / "plots" / f"{script}.py"), str(results_dir), "--out", str(out)],
            capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert out.read_text().lstrip().startswith("<?xml")
    bad = subprocess.run(
        [sys.executable, str(root / "plots" / "method_comparison.py"), str(tmp_path / "none"), "--out", str(tmp_path / "x.png")],
        capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and "error" in bad.stderr


# ---------------------------------------------------------------- the values drawn
def _matrix(offset: float, seed: int) -> list[list[float]]:
    """A (T, T) accuracy matrix whose every cell differs (a wrong row or column shows)."""
    return [[round(offset + 0.1 * i + 0.03 * j + 0.02 * seed, 4) for j in range(T)] for i in range(T)]


def _curve(seed: int) -> dict:
    experience = [0, 0, 1, 1, 2, 2]
    return {"iteration": [0, 10, 20, 30, 40, 50], "experience": experience,
            "accuracy": [[round(0.3 + 0.05 * k + 0.1 * j + 0.01 * seed, 4) for j in range(T)] for k in range(6)]}


def _hand_runs(curve: bool = False) -> list[dict]:
    runs = []
    for method, offset in (("naive", 0.1), ("kd-replay", 0.4)):
        for seed in (0, 1):
            runs.append({"stream": "s", "method": method, "seed": seed, "scenario": "class-il", "config": {},
                         "accuracy_matrix": _matrix(offset, seed),
                         "curve": _curve(seed) if curve and method == "kd-replay" else None})
    return runs


def _seed_mean(runs: list[dict], method: str, key: str = "accuracy_matrix") -> np.ndarray:
    """100 × the mean over seeds of ``key`` (the matrix, or the curve's accuracies)."""
    values = [r[key]["accuracy"] if key == "curve" else r[key] for r in runs if r["method"] == method]
    return 100.0 * np.mean(np.array(values), axis=0)


def _panels_by_method(fig) -> dict[str, object]:
    return {ax.get_title().split(" ")[0]: ax for ax in fig.axes if ax.get_title()}


def test_forgetting_curves_draw_each_experiences_seed_mean_from_when_it_is_trained():
    runs = _hand_runs()
    panels = _panels_by_method(forgetting_curves_figure(runs))
    assert sorted(panels) == ["kd-replay", "naive"]
    for method, ax in panels.items():
        mean = _seed_mean(runs, method)
        assert len(ax.lines) == T
        for j, line in enumerate(ax.lines):  # the curve of test experience j: R[j:, j]
            np.testing.assert_array_equal(line.get_xdata(), np.arange(j, T))
            np.testing.assert_allclose(line.get_ydata(), mean[j:, j])


def test_forgetting_curves_on_an_iteration_grid_draw_the_curves_accuracies():
    runs = _hand_runs(curve=True)
    ax = _panels_by_method(forgetting_curves_figure(runs))["kd-replay"]
    iteration, experience = np.array(_curve(0)["iteration"]), np.array(_curve(0)["experience"])
    mean = _seed_mean(runs, "kd-replay", "curve")
    for j, line in enumerate(ax.lines[:T]):
        trained = experience >= j
        np.testing.assert_array_equal(line.get_xdata(), iteration[trained])
        np.testing.assert_allclose(line.get_ydata(), mean[trained, j])
    assert [line.get_xdata()[0] for line in ax.lines[T:]] == [20, 40]  # where experiences 1 and 2 start


def test_heatmap_cells_and_their_labels_are_the_seed_mean_matrix():
    runs = _hand_runs()
    panels = _panels_by_method(accuracy_heatmaps_figure(runs))
    for method, ax in panels.items():
        mean = _seed_mean(runs, method)
        (image,) = ax.images
        np.testing.assert_allclose(np.asarray(image.get_array()), mean)
        labels = {text.get_position(): text.get_text() for text in ax.texts}
        assert labels == {(j, i): f"{mean[i, j]:.1f}" for i in range(T) for j in range(T)}


def test_comparison_bars_are_the_final_accuracy_and_forgetting_of_each_setting():
    runs = _hand_runs()
    accuracy_ax, forgetting_ax = method_comparison_figure(runs).axes
    names = [label.get_text() for label in accuracy_ax.get_xticklabels()]
    assert names == ["kd-replay", "naive"]
    expected_accuracy, expected_forgetting, expected_std = [], [], []
    for method in names:
        matrices = np.array([r["accuracy_matrix"] for r in runs if r["method"] == method])
        final = matrices[:, -1].mean(axis=1)  # each seed's mean over test experiences after the last one
        best = matrices[:, :-1, :-1].max(axis=1)  # best-ever accuracy before the end, per old experience
        forgetting = (best - matrices[:, -1, :-1]).mean(axis=1)
        expected_accuracy.append(100 * final.mean())
        expected_std.append(100 * final.std(ddof=1))
        expected_forgetting.append(100 * forgetting.mean())
    np.testing.assert_allclose([bar.get_height() for bar in accuracy_ax.patches], expected_accuracy)
    np.testing.assert_allclose([bar.get_height() for bar in forgetting_ax.patches], expected_forgetting, atol=1e-9)
    (bars,) = [c for c in accuracy_ax.containers if isinstance(c, BarContainer)]
    (segments,) = bars.errorbar.lines[2]
    np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in segments.get_segments()], 2 * np.array(expected_std))


def _sweep_run(t: float, alpha: float, seed: int) -> dict:
    accuracy = round(0.5 + 0.1 * np.log2(t) + 0.05 * alpha + 0.01 * seed, 4)
    record = {"agreement": round(0.9 - 0.05 * np.log2(t) + 0.02 * alpha, 4), "kl": 0.1,
              "teacher_correct_accuracy": round(0.95 - 0.01 * t, 4), "teacher_wrong_accuracy": round(0.1 * t + alpha / 10, 4)}
    return {"stream": "s", "method": "kd-replay", "label": f"T{t:g}-a{alpha:g}", "seed": seed, "scenario": "class-il",
            "config": {"method_args": {"temperature": t, "alpha": alpha}},
            "accuracy_matrix": [[accuracy, 0.0], [accuracy, accuracy]],
            "final_average_accuracy": accuracy, "average_forgetting": 0.0, "diagnostics": [None, record]}


def test_distillers_dilemma_lines_are_each_alphas_values_against_temperature():
    temperatures, alphas = (1.0, 2.0, 4.0), (0.5, 1.0)
    runs = [_sweep_run(t, a, s) for t in temperatures for a in alphas for s in (0, 1)]
    accuracy_ax, agreement_ax, student_ax = distillers_dilemma_figure(runs).axes
    assert [c.get_label() for c in accuracy_ax.containers] == ["α = 0.5", "α = 1"]
    for k, alpha in enumerate(alphas):
        one = {t: [r for r in runs if r["config"]["method_args"] == {"temperature": t, "alpha": alpha}]
               for t in temperatures}
        diagnostic = {name: [100 * one[t][0]["diagnostics"][1][name] for t in temperatures]
                      for name in ("agreement", "teacher_wrong_accuracy", "teacher_correct_accuracy")}
        (accuracy_line, _, _) = accuracy_ax.containers[k].lines
        np.testing.assert_array_equal(accuracy_line.get_xdata(), temperatures)
        np.testing.assert_allclose(accuracy_line.get_ydata(),
                                   [100 * np.mean([r["final_average_accuracy"] for r in one[t]]) for t in temperatures])
        np.testing.assert_allclose(agreement_ax.lines[k].get_ydata(), diagnostic["agreement"])
        wrong, right = student_ax.lines[2 * k : 2 * k + 2]
        for line in (agreement_ax.lines[k], wrong, right):
            np.testing.assert_array_equal(line.get_xdata(), temperatures)
        np.testing.assert_allclose(wrong.get_ydata(), diagnostic["teacher_wrong_accuracy"])
        np.testing.assert_allclose(right.get_ydata(), diagnostic["teacher_correct_accuracy"])
    best = max(runs, key=lambda r: r["final_average_accuracy"])["config"]["method_args"]["temperature"]
    assert all(ax.lines[-1].get_xdata()[0] == best for ax in (accuracy_ax, agreement_ax, student_ax))
