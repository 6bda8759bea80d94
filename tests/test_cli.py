import subprocess
import sys

import pytest

from ckd.cli import main
from ckd.common.errors import RunsFailed


@pytest.mark.parametrize("extra", [[], ["--jobs", "2", "--epochs", "1"]], ids=["quick-start", "two-workers"])
def test_run_prints_its_table_and_no_warning(tmp_path, extra):
    command = [sys.executable, "-m", "ckd.cli", "run", "--stream", "split-digits", "--method", "naive", "kd-replay",
               "--seeds", "0", "--quiet", "--out", str(tmp_path), *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "Warning" not in done.stdout and "warn" not in done.stdout.lower()
    assert "| split-digits | class-il | kd-replay |" in done.stdout and "| split-digits | class-il | naive |" in done.stdout


def test_errors_are_one_line_and_the_traceback_needs_debug(tmp_path, capsys):
    assert main(["run", "--stream", "split-cifar", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ckd: error: unknown stream 'split-cifar'; available: ") and err.count("\n") == 1
    with pytest.raises(ValueError, match="unknown stream 'split-cifar'"):
        main(["run", "--stream", "split-cifar", "--out", str(tmp_path), "--quiet", "--debug"])
    assert main(["run", "--stream", "split-digits", "--set", "alpha", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "ckd: error: --set expects key=value, got 'alpha'\n"
    assert main(["run", "--logger", "mlflow", "--out", str(tmp_path)]) == 2
    assert "unknown logger(s) ['mlflow']" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_failed_run_is_one_line_and_its_traceback_is_kept(tmp_path, capsys):
    args = ["run", "--stream", "split-digits", "--method", "kd-replay", "--mem-size", "0", "--epochs", "1",
            "--out", str(tmp_path), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "ckd: error: split-digits kd-replay seed 0: mem_size must be an integer >= 1, got 0",
        f"ckd: error: 1 of 1 runs failed; errors and tracebacks in {tmp_path / 'failures.json'}",
    ]
    with pytest.raises(RunsFailed, match="1 of 1 runs failed"):
        main([*args, "--debug"])
    assert "Traceback (most recent call last)" in capsys.readouterr().err  # the failed run's, printed as it ends


def test_ray_options_that_cannot_apply_are_one_line_errors(tmp_path, capsys):
    suite = tmp_path / "suite.toml"
    suite.write_text('[suite]\nvectorize = true\nray = "auto"\n[[run]]\nstream = "split-digits"\nmethod = "naive"\n')
    out = str(tmp_path / "out")
    assert main(["sweep", "--scheduler", "asha", "--out", out]) == 2
    assert capsys.readouterr().err == "ckd: error: --scheduler asha needs --ray: early stopping runs on Ray Tune\n"
    assert main(["sweep", "--ray", "--jobs", "2", "--out", out]) == 2
    assert "with Ray the cluster's CPUs decide, drop --jobs" in capsys.readouterr().err
    assert main(["suite", str(suite), "--out", out]) == 2  # ray = "auto" under [suite]
    assert capsys.readouterr().err == f"ckd: error: {suite} vectorizes its seeds in one process; run it without Ray\n"
    assert not (tmp_path / "out").exists()


def test_max_train_and_max_test_cap_each_experience(tmp_path):
    import json

    assert main(["run", "--stream", "split-digits", "--method", "naive", "--max-train", "30", "--max-test", "20",
                 "--epochs", "1", "--batch-size", "10", "--quiet", "--out", str(tmp_path)]) == 0
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert result["config"]["max_train_per_experience"] == 30 and result["config"]["max_test_per_experience"] == 20
    assert result["iterations_per_experience"] == [3] * 5  # 30 samples at batch 10
