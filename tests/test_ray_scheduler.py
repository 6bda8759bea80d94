"""RayScheduler on a local Ray instance with 2 CPUs (skipped when Ray is not installed)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ray = pytest.importorskip("ray")

from ckd.benchmarking.ray_scheduler import RayScheduler  # noqa: E402
from ckd.benchmarking.run_config import RunConfig, lock_path, result_path  # noqa: E402
from ckd.benchmarking.scheduling import FAILURES_FILE, LocalScheduler, run_all  # noqa: E402
from ckd.benchmarking.suite import load_suite  # noqa: E402
from ckd.common.errors import RunsFailed  # noqa: E402
from lock_holder import hold_finished_run  # noqa: E402

# What differs between two runs of one config: time and the process's memory.
VOLATILE = ("wall_time_s", "wall_time_per_experience_s", "peak_cpu_memory_mb")

SUITE = """
[suite]
seeds = [0, 1]
[defaults]
epochs = 1
max_train_per_experience = 60
[[run]]
stream = "split-digits"
method = "naive"
[[run]]
stream = "split-digits"
method = "kd-replay"
[run.args]
mem_size = 20
"""

BAD = RunConfig("split-digits", "kd-replay", seed=0, epochs=1, max_train_per_experience=40,
                method_args={"mem_size": 0})


def _stable(path) -> str:
    result = json.loads(path.read_text())
    for key in VOLATILE:
        assert key in result
        result.pop(key)
    return json.dumps(result, indent=1)


@pytest.mark.slow
def test_a_suite_on_ray_writes_the_serial_results(tmp_path, local_ray):
    (tmp_path / "suite.toml").write_text(SUITE)
    configs = load_suite(tmp_path / "suite.toml")
    serial = run_all(LocalScheduler(1), configs, tmp_path / "serial")
    on_ray = run_all(RayScheduler(), configs, tmp_path / "ray")
    assert len(on_ray) == 4 and all(o.ok and o.ran for o in on_ray)
    for a, b in zip(serial, on_ray):
        assert a.path.name == b.path.name
        assert _stable(a.path) == _stable(b.path)
    again = run_all(RayScheduler(), configs, tmp_path / "ray")
    assert [o.ran for o in again] == [False] * 4  # same configs: kept, nothing sent to Ray


@pytest.mark.slow
def test_a_failed_ray_task_is_recorded_and_the_others_complete(tmp_path, local_ray):
    good = RunConfig("split-digits", "naive", seed=0, epochs=1, max_train_per_experience=40)
    with pytest.raises(RunsFailed, match="1 of 2 runs failed"):
        run_all(RayScheduler(), [BAD, good], tmp_path)
    assert result_path(tmp_path, good).is_file() and not result_path(tmp_path, BAD).exists()
    entry = json.loads((tmp_path / FAILURES_FILE).read_text())[result_path(tmp_path, BAD).name]
    assert entry["error"] == "mem_size must be an integer >= 1, got 0"
    assert "Traceback" in entry["traceback"] and "ValueError" in entry["traceback"]


def test_ray_scheduler_rejects_bad_settings():
    with pytest.raises(ValueError, match="gpus_per_run must be > 0, got 0"):
        RayScheduler(gpus_per_run=0)
    with pytest.raises(ValueError, match="loggers cannot be used with Ray"):
        RayScheduler(loggers=["csv"])
    with pytest.raises(ValueError, match="a cluster brings its own"):
        RayScheduler("auto", num_cpus=2)


@pytest.mark.slow
def test_a_killed_driver_resumes(tmp_path, local_ray):
    """A driver on the cluster is killed once the first result is in; the rerun keeps it and runs the rest."""
    suite = SUITE.replace('method = "kd-replay"', 'method = "kd-replay"\nseeds = [0]')
    (tmp_path / "suite.toml").write_text(suite)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ckd.cli", "suite", str(tmp_path / "suite.toml"), "--ray", local_ray, "--quiet",
               "--out", str(out)]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 600  # a bound, not a wait: under load the first result can take minutes
        while not list(out.glob("*.json")) and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.1)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)  # whatever Ray left in the driver's session
        except ProcessLookupError:
            pass
    before = {p.name: p.read_bytes() for p in out.glob("*.json")}
    assert before and len(before) < 3 and not list(out.glob(".*.tmp"))
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    after = {p.name: p.read_bytes() for p in out.glob("*.json")}
    assert len(after) == 3 and all(after[name] == data for name, data in before.items())
    assert done.stdout.count("[kept (config unchanged)]") == len(before)
    assert done.stdout.count("[ran]") == 3 - len(before)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks on Windows")
@pytest.mark.parametrize("scheduler", ["ray", "tune"])
def test_a_run_another_process_holds_goes_last_on_ray_and_its_result_is_kept(tmp_path, local_ray, scheduler):
    from ckd.benchmarking.tune_scheduler import TuneScheduler

    first, *rest = [RunConfig("split-digits", "naive", seed=s, epochs=1, max_train_per_experience=40) for s in range(3)]
    out = tmp_path / "out"
    run_all(LocalScheduler(), [first], out)
    path = result_path(out, first)
    holder, saved = hold_finished_run(path, lock_path(out, first), [result_path(out, c) for c in rest])
    seen = []
    try:
        outcomes = run_all(RayScheduler() if scheduler == "ray" else TuneScheduler(), [first, *rest], out, seen.append)
    finally:
        holder.wait()
    assert seen[-1].config.seed == 0  # the held run came back last
    assert sorted((o.config.seed, o.ran) for o in outcomes) == [(0, False), (1, True), (2, True)]
    assert path.read_bytes() == saved.read_bytes()  # the other process's result, kept
    assert not list(out.glob("*.lock"))
