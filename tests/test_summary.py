import csv
import json

import pytest

from ckd.reports.summary import format_markdown, load_results, setting_label, summarize, write_summary


def run(method, seed, R, *, stream="split-mnist", mem_size=None, **extra):
    config = {"lr": 0.03} if mem_size is None else {"lr": 0.03, "mem_size": mem_size}
    return {
        "stream": stream,
        "method": method,
        "seed": seed,
        "scenario": "class-il",
        "config": config,
        "accuracy_matrix": R,
        "wall_time_s": 10.0 + seed,
        "peak_cpu_memory_mb": 800.0,
        "peak_cuda_memory_mb": None,
        **extra,
    }


# ACC 0.7, forgetting 0.25 (both definitions), BWT -0.25
R_A = [[0.9, 0.0, 0.0], [0.6, 0.8, 0.0], [0.5, 0.7, 0.9]]
# ACC 0.8, forgetting ((0.9 - 0.7) + (0.8 - 0.8)) / 2 = 0.1
R_B = [[0.9, 0.0, 0.0], [0.8, 0.8, 0.0], [0.7, 0.8, 0.9]]


def test_setting_label_prefers_label_then_mem_size_then_method():
    labelled = {"method": "kd-replay", "label": "kd-replay-T4", "config": {"mem_size": 500}}
    assert setting_label(labelled) == "kd-replay-T4"
    assert setting_label({"method": "kd-replay", "config": {"mem_size": 500}}) == "kd-replay@500"
    assert setting_label({"method": "naive", "config": {"mem_size": None}}) == "naive"
    assert setting_label({"method": "naive"}) == "naive"


def test_summarize_mean_and_sample_std_over_seeds():
    rows = summarize([run("kd-replay", 0, R_A, mem_size=500), run("kd-replay", 1, R_B, mem_size=500)])
    assert len(rows) == 1
    row = rows[0]
    assert (row["stream"], row["method"], row["label"], row["n_seeds"]) == (
        "split-mnist", "kd-replay", "kd-replay@500", 2,
    )
    assert row["seeds"] == [0, 1]
    # ACC: mean(0.7, 0.8) = 0.75; sample std = |0.8 - 0.7| / sqrt(2) = 0.0707107
    assert row["final_average_accuracy_mean"] == pytest.approx(0.75)
    assert row["final_average_accuracy_std"] == pytest.approx(0.1 / 2**0.5)
    # forgetting: mean(0.25, 0.1) = 0.175; std = 0.15 / sqrt(2)
    assert row["average_forgetting_mean"] == pytest.approx(0.175)
    assert row["average_forgetting_std"] == pytest.approx(0.15 / 2**0.5)
    assert row["bwt_mean"] == pytest.approx(-0.175)
    # wall time: mean(10, 11) = 10.5; std = 1 / sqrt(2)
    assert row["wall_time_s_mean"] == pytest.approx(10.5)
    assert row["wall_time_s_std"] == pytest.approx(2**-0.5)
    assert "peak_cuda_memory_mb_mean" not in row


def test_summarize_separates_settings_and_gives_zero_std_for_one_seed():
    rows = summarize(
        [
            run("kd-replay", 0, R_A, mem_size=1000),
            run("kd-replay", 0, R_B, mem_size=200, peak_cuda_memory_mb=300.0),
            run("naive", 0, R_A, stream="split-fmnist"),
        ]
    )
    assert [(r["stream"], r["label"]) for r in rows] == [
        ("split-fmnist", "naive"),
        ("split-mnist", "kd-replay@200"),
        ("split-mnist", "kd-replay@1000"),
    ]
    assert all(r["final_average_accuracy_std"] == 0.0 for r in rows)
    assert rows[1]["peak_cuda_memory_mb_mean"] == 300.0
    assert rows[0]["peak_cuda_memory_mb_mean"] is None


def test_duplicate_seed_in_one_setting_is_an_error():
    with pytest.raises(ValueError, match="seed 0"):
        summarize([run("naive", 0, R_A), run("naive", 0, R_B)])


def test_invalid_matrix_names_the_run():
    with pytest.raises(ValueError, match="'naive' seed 3.*R\\[0\\]\\[0\\] = 2.0"):
        summarize([run("naive", 3, [[2.0]])])


def test_load_results_is_recursive_sorted_and_skips_non_results(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "naive_0.json").write_text(json.dumps(run("naive", 0, R_A)))
    (tmp_path / "a_replay_1.json").write_text(json.dumps(run("replay", 1, R_B)))
    (tmp_path / "config.json").write_text(json.dumps({"lr": 0.1}))
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "notes.txt").write_text("not json")
    results = load_results(tmp_path)
    assert [(r["method"], r["seed"]) for r in results] == [("replay", 1), ("naive", 0)]


def test_load_results_rejects_broken_json_and_missing_dir(tmp_path):
    (tmp_path / "half.json").write_text('{"accuracy_matrix": [[0.')
    with pytest.raises(ValueError, match="half.json"):
        load_results(tmp_path)
    with pytest.raises(NotADirectoryError, match="nope"):
        load_results(tmp_path / "nope")


def test_format_markdown_rows_in_percent():
    rows = summarize([run("kd-replay", 0, R_A, mem_size=500), run("kd-replay", 1, R_B, mem_size=500)])
    text = format_markdown(rows)
    lines = text.splitlines()
    assert lines[0].startswith("| stream | scenario | method | setting | seeds | ACC (%)")
    assert "| split-mnist | class-il | kd-replay | kd-replay@500 | 2 | 75.00 ± 7.07 | 17.50 ± 10.61 |" in text
    assert "sample std (ddof=1)" in text
    with pytest.raises(ValueError, match="no summary rows"):
        format_markdown([])


def test_write_summary_writes_markdown_and_numeric_csv(tmp_path):
    results = [run("naive", 0, R_A), run("naive", 1, R_B), run("replay", 0, R_B, mem_size=500)]
    md_path, csv_path = write_summary(results, tmp_path / "out")
    assert md_path.name == "summary.md" and csv_path.name == "summary.csv"
    assert "replay@500" in md_path.read_text(encoding="utf-8")
    with csv_path.open(newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert [r["label"] for r in table] == ["naive", "replay@500"]
    assert float(table[0]["final_average_accuracy_mean"]) == pytest.approx(0.75)
    assert float(table[0]["final_average_accuracy_std"]) == pytest.approx(0.1 / 2**0.5)
    assert table[0]["seeds"] == "0 1"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.csv", "summary.md"]


def test_ema_scored_runs_are_shown_with_their_trained_weights_too(tmp_path):
    ema = [run("replay", s, R_B, mem_size=500, scored_model="ema", trained_weights={"accuracy_matrix": R_A})
           for s in (0, 1)]
    plain = [run("naive", 0, R_A, scored_model="model", trained_weights=None)]
    rows = {row["method"]: row for row in summarize(ema + plain)}
    assert rows["replay"]["final_average_accuracy_mean"] == pytest.approx(0.8)  # the EMA's matrix
    assert rows["replay"]["trained_weights_accuracy_mean"] == pytest.approx(0.7)  # R_A's
    assert rows["naive"]["trained_weights_accuracy_mean"] == pytest.approx(0.7)  # its own matrix
    assert rows["replay"]["scored_model"] == "ema" and rows["naive"]["scored_model"] == "model"
    table = format_markdown(list(rows.values()))
    header = table.splitlines()[0]
    assert "| scored |" in header and "ACC, trained weights (%)" in header
    replay_line = next(line for line in table.splitlines() if "| replay |" in line)
    assert "| ema |" in replay_line and "80.00 ± 0.00" in replay_line and "70.00 ± 0.00" in replay_line
    _, csv_path = write_summary(ema + plain, tmp_path)
    records = {r["method"]: r for r in csv.DictReader(csv_path.open())}
    assert float(records["replay"]["trained_weights_accuracy_mean"]) == pytest.approx(0.7)
