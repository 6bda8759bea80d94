import json
import math

import matplotlib.image
import pytest

from ckd.benchmarking.run_config import RunConfig
from ckd.benchmarking.sweep import sweep_configs
from ckd.cli import main
from ckd.reports.plotting import plot_distillers_dilemma
from ckd.reports.sweeps import format_sweep, recommend, summarize_sweep


def _result(t, alpha, seed, accuracy, agreement, wrong, method="kd-replay"):
    key = "current_alpha" if method == "kd-lwf" else "alpha"
    record = {"agreement": agreement, "kl": 0.1, "teacher_correct_accuracy": 0.9, "teacher_wrong_accuracy": wrong}
    return {
        "stream": "split-mnist", "method": method, "label": f"{method}@T{t:g}-a{alpha:g}", "seed": seed,
        "scenario": "class-il",
        "config": {"method_args": {"temperature": t, key: alpha}},
        "accuracy_matrix": [[accuracy, 0.0], [accuracy, accuracy]], "experience_classes": [[0, 1], [2, 3]],
        "final_average_accuracy": accuracy, "average_forgetting": 0.05,
        # The first experience has no teacher; the second has a record with a null part.
        "diagnostics": [None, record, {**record, "teacher_wrong_accuracy": None}],
    }


def test_sweep_configs_cover_the_grid_on_a_validation_split():
    base = RunConfig("split-digits", "kd-replay", validation_fraction=0.1, method_args={"mem_size": 100})
    configs = sweep_configs(base, [1.0, 4.0], [0.5, 1.0], [0, 1])
    assert len(configs) == 8
    assert {(c.method_args["temperature"], c.method_args["alpha"], c.seed) for c in configs} == {
        (t, a, s) for t in (1.0, 4.0) for a in (0.5, 1.0) for s in (0, 1)
    }
    assert all(c.method_args["mem_size"] == 100 and c.validation_fraction == 0.1 for c in configs)
    assert configs[0].label == "kd-replay@T1-a0.5"
    lwf = sweep_configs(RunConfig("split-digits", "kd-lwf", validation_fraction=0.1), [2.0], [0.3], [0])
    assert lwf[0].method_args["current_alpha"] == 0.3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"validation_fraction": 0.0}, "must evaluate on a validation split"),
        ({"temperatures": [2.0, 0.0]}, "temperature must be > 0, got 0.0"),
        ({"alphas": [-1.0]}, "alpha must be >= 0, got -1.0"),
        ({"method": "naive"}, "method 'naive' has no temperature to sweep"),
    ],
)
def test_sweep_rejects_bad_grids(kwargs, message):
    base = RunConfig("split-digits", kwargs.pop("method", "kd-replay"),
                     validation_fraction=kwargs.pop("validation_fraction", 0.1))
    grid = {"temperatures": [1.0], "alphas": [1.0], "seeds": [0], **kwargs}
    with pytest.raises(ValueError, match=message):
        sweep_configs(base, grid["temperatures"], grid["alphas"], grid["seeds"])


def test_summary_averages_seeds_and_experiences_and_recommends_the_best_accuracy():
    results = [
        _result(1.0, 1.0, 0, 0.80, 0.99, 0.10), _result(1.0, 1.0, 1, 0.82, 0.97, 0.20),
        _result(4.0, 1.0, 0, 0.90, 0.90, 0.40), _result(4.0, 1.0, 1, 0.88, 0.92, 0.50),
        _result(16.0, 1.0, 0, 0.85, 0.80, 0.45),
    ]
    rows = summarize_sweep(results)
    assert [r["temperature"] for r in rows] == [1.0, 4.0, 16.0]
    low = rows[0]
    assert low["accuracy"] == pytest.approx(81.0)
    assert low["accuracy_std"] == pytest.approx(math.sqrt(2.0))  # sample std of 80 and 82
    assert low["agreement"] == pytest.approx(0.98)
    assert low["teacher_wrong_accuracy"] == pytest.approx(0.15)  # the null part is skipped
    assert low["seeds"] == [0, 1]
    assert recommend(rows)["temperature"] == 4.0
    table = format_sweep(rows)
    assert "| 4 | 1 | 89.00 ± 1.41 **←** |" in table and table.count("←") == 1
    with pytest.raises(ValueError, match="no sweep results"):
        recommend([])


def test_distillers_dilemma_figure(tmp_path):
    results = [_result(t, a, 0, acc, agr, wrong)
               for (t, acc, agr, wrong) in ((1.0, 0.8, 0.99, 0.1), (4.0, 0.9, 0.9, 0.4))
               for a in (0.5, 1.0)]
    path = plot_distillers_dilemma(results, tmp_path / "dilemma.png")
    height, width, _ = matplotlib.image.imread(path).shape
    assert width > 2 * height  # three panels side by side
    with pytest.raises(ValueError, match="one method"):
        plot_distillers_dilemma(results + [_result(2.0, 1.0, 0, 0.5, 0.5, 0.5, method="kd-lwf")], tmp_path / "x.png")


def test_cli_sweep_writes_results_summary_and_figure(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", "--stream", "split-digits", "--temperature", "1", "4", "--alpha", "1",
                 "--epochs", "1", "--set", "mem_size=100", "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads((out / "sweep.json").read_text())
    rows = summary["rows"]
    assert [r["temperature"] for r in rows] == [1.0, 4.0]
    # Each row is read back from its run's result file on the validation split.
    runs = {r["config"]["method_args"]["temperature"]: r
            for r in (json.loads(p.read_text()) for p in out.glob("split-digits__*.json"))}
    assert sorted(runs) == [1.0, 4.0]
    for row in rows:
        result = runs[row["temperature"]]
        assert result["config"]["validation_fraction"] == 0.1 and result["config"]["method_args"]["mem_size"] == 100
        assert row["accuracy"] == pytest.approx(100 * result["final_average_accuracy"])
        agreement = [d["agreement"] for d in result["diagnostics"] if d]
        assert len(agreement) == 4 and row["agreement"] == pytest.approx(sum(agreement) / 4)
    # The two temperatures train differently, and the better one is recommended.
    assert rows[0]["accuracy"] != rows[1]["accuracy"]
    best = max(rows, key=lambda r: r["accuracy"])
    assert summary["recommended"] == {"temperature": best["temperature"], "alpha": 1.0}
    assert (out / "distillers_dilemma.png").is_file()
    assert f"recommended: temperature={best['temperature']:g} alpha=1 ({best['accuracy']:.2f}%" in capsys.readouterr().out
    assert main(["sweep", "--temperature", "0", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert not (tmp_path / "bad").exists()
