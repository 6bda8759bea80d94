import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from ckd.reports.plotting import (
    DPI,
    METHOD_COLORS,
    figure_size,
    method_color,
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
