"""The speed benchmark runs end to end and reports the ratios its targets name."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
speed = pytest.importorskip("speed")


def test_speed_reports_the_fast_and_vectorized_ratios_side_by_side(mnist_root, tmp_path, capsys, monkeypatch):
    threads = []  # each timing's intra-op threads: the vectorized pass's own must not leak into the others
    for cls in (speed.RawLoop, speed.AvalancheMethod, speed.VectorizedMethod):
        def timed(self, experience, _time=cls.time_experience):
            threads.append((type(self).__name__, torch.get_num_threads()))
            return _time(self, experience)
        monkeypatch.setattr(cls, "time_experience", timed)
    out = tmp_path / "speed.json"
    argv = ["--data-root", str(mnist_root), "--max-train", "60", "--repeats", "2", "--json", str(out),
            "--methods", "raw_loop", "kd_replay_fast", "kd_replay_vectorized_5"]
    assert speed.main(argv) == 0
    result = json.loads(out.read_text())
    for ratios in (result["ratios"], result["ratios_paired"]):
        assert set(ratios) == {"kd_replay_fast_vs_raw_loop", "vectorized_5_seeds_vs_5_sequential"}
        assert all(math.isfinite(v) and v > 0 for v in ratios.values())
    assert all(len(v) == 2 for v in result["seconds_per_iteration_all"].values())
    assert result["vectorized_threads"] >= 1
    assert "vectorized_5_seeds_vs_5_sequential" in capsys.readouterr().out
    assert {t for name, t in threads if name != "VectorizedMethod"} == {1}  # --threads' default


def test_der_table_shows_each_method_with_its_ema_and_its_trained_weights(tmp_path):
    import der_table

    def result(label, seed, scored, trained, scored_model):
        return {"stream": "split-mnist", "method": "x", "label": label, "seed": seed, "scenario": "class-il",
                "accuracy_matrix": [[scored]], "final_average_accuracy": scored, "final_average_task_il_accuracy": None,
                "scored_model": scored_model,
                "trained_weights": {"final_average_accuracy": trained} if scored_model == "ema" else None}

    runs = [result("der++@500", 0, 0.92, 0.90, "ema"), result("der++@500", 1, 0.94, 0.92, "ema"),
            result("er@500", 0, 0.88, 0.88, "model")]
    for i, r in enumerate(runs):
        (tmp_path / f"r{i}.json").write_text(json.dumps(r))
    table = der_table.markdown([str(tmp_path)])
    row = next(line for line in table.splitlines() if line.startswith("| Seq-MNIST class-IL | 500 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert cells[header.index("der++ ours")] == "93.00 ± 1.41 (2) / 91.00 ± 1.41 (2)"
    assert cells[header.index("er ours")] == "— / 88.00 ± 0.00 (1)"  # scored with its trained weights only


def test_speed_cnn_times_each_method_in_both_precisions(tmp_path, capsys):
    from archives import write_cifar10

    speed_cnn = pytest.importorskip("speed_cnn")
    write_cifar10(tmp_path, train_per_class=12, test_per_class=2)
    out = tmp_path / "speed_cnn.json"
    argv = ["--data-root", str(tmp_path), "--no-checksum", "--max-train", "20", "--max-test", "4",
            "--repeats", "2", "--json", str(out)]
    assert speed_cnn.main(argv) == 0
    result = json.loads(out.read_text())
    names = {f"{m}_{p}" for m in speed_cnn.METHODS for p in speed_cnn.PRECISIONS}
    names |= {f"{m}_bf16_teachers" for m in ("kd_replay", "kd_replay_ema_all_rows")}
    assert set(result["seconds_per_iteration"]) == names
    assert all(len(v) == 2 for v in result["seconds_per_iteration_all"].values())
    assert set(result["ratios"]) == set(speed_cnn.RATIOS) == set(result["ratios_paired"])
    assert all(math.isfinite(v) and v > 0 for v in result["ratios"].values())
    assert set(result["run_estimate_s"]) == {f"{m}_{p}" for m in ("kd_replay", "kd_replay_ema_all_rows")
                                             for p in ("fp32", "bf16", "bf16_teachers")}


def test_the_pick_is_the_best_setting_and_scoring_of_each_method(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "tuning"))
    import pick

    assert pick.split_label("seqmnist@200-er-ace-lr0.01-rb10") == ("seqmnist@200", "er-ace", "lr0.01-rb10")
    assert pick.split_label("seqmnist@200-er-lr0.1-rb32") == ("seqmnist@200", "er", "lr0.1-rb32")
    runs = [("er-ace-lr0.1", 0.70, 0.80), ("er-ace-lr0.01", 0.75, 0.76), ("kd-replay-lr0.1", 0.90, 0.85)]
    for i, (setting, ema, trained) in enumerate(runs):
        result = {"label": f"seqmnist@500-{setting}", "accuracy_matrix": [[ema]], "final_average_accuracy": ema,
                  "trained_weights": {"final_average_accuracy": trained}}
        (tmp_path / f"r{i}.json").write_text(json.dumps(result))
    rows = [line for line in pick.markdown(str(tmp_path)).splitlines() if line.startswith("| seqmnist@500")]
    assert "| er-ace | 2 | lr0.1, trained | 70.00 | 80.00 | lr0.01 trained (76.00) |" in rows[0]
    assert "| kd-replay | 1 | lr0.1, ema | 90.00 | 85.00 | — |" in rows[1]


def test_the_picks_become_a_test_set_suite(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "tuning"))
    import pick

    from ckd.benchmarking.run_config import RunConfig
    from ckd.benchmarking.suite import load_suite

    for label, method, lr, ema, trained in [("seqmnist@500-er-ace-lr0.1", "er-ace", 0.1, 0.70, 0.80),
                                            ("seqmnist@500-kd-replay-lr0.03", "kd-replay", 0.03, 0.90, 0.85)]:
        config = RunConfig("split-digits", method, label=label, lr=lr, validation_fraction=0.1)
        result = {"label": label, "method": method, "stream": "split-digits", "seed": 0,
                  "config": config.resolved(), "accuracy_matrix": [[ema]], "final_average_accuracy": ema,
                  "trained_weights": {"final_average_accuracy": trained}}
        (tmp_path / f"{label}__seed0.json").write_text(json.dumps(result))
    path = tmp_path / "suite.toml"
    assert pick.main([str(tmp_path), "--suite", str(path), "--baseline-seeds", "0", "1", "--kd-seeds", "0"]) == 0
    configs = load_suite(path)
    assert [(c.name, c.seed) for c in configs] == [("er-ace@500", 0), ("er-ace@500", 1), ("kd-replay@500", 0)]
    assert all(c.validation_fraction == 0.0 for c in configs)
    assert [c.lr for c in configs] == [0.1, 0.1, 0.03]
    assert [c.eval_ema_half_life for c in configs] == [0.0, 0.0, 0.3]  # as each scored best on validation
