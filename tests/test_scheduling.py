import json
import sys

import pytest

from ckd.benchmarking.run_config import RunConfig, lock_path, result_path
from ckd.benchmarking.scheduling import FAILURES_FILE, LocalScheduler, execute, run_all
from ckd.common.errors import RunsFailed
from lock_holder import hold_finished_run

GOOD = RunConfig("split-digits", "naive", seed=0, epochs=1, max_train_per_experience=40)
# Valid as a config, refused when the plugin is built: a run that fails.
BAD = RunConfig("split-digits", "kd-replay", seed=0, epochs=1, max_train_per_experience=40,
                method_args={"mem_size": 0})


def test_execute_returns_the_failure_instead_of_raising(tmp_path):
    outcome = execute(BAD, tmp_path)
    assert not outcome.ok and outcome.path == result_path(tmp_path, BAD)
    assert outcome.error == "mem_size must be an integer >= 1, got 0"
    assert "Traceback" in outcome.traceback and "ValueError" in outcome.traceback
    assert not outcome.path.exists()


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failed_run_is_recorded_and_does_not_stop_the_others(tmp_path, jobs):
    seen = []
    with pytest.raises(RunsFailed, match=f"1 of 2 runs failed; errors and tracebacks in {tmp_path / FAILURES_FILE}"):
        run_all(LocalScheduler(jobs), [BAD, GOOD], tmp_path, seen.append)
    assert sorted(o.ok for o in seen) == [False, True]
    assert result_path(tmp_path, GOOD).is_file() and not result_path(tmp_path, BAD).exists()
    failures = json.loads((tmp_path / FAILURES_FILE).read_text())
    entry = failures[result_path(tmp_path, BAD).name]
    assert list(failures) == [result_path(tmp_path, BAD).name]
    assert (entry["label"], entry["seed"], entry["config"]["method_args"]["mem_size"]) == ("kd-replay", 0, 0)
    assert entry["error"] == "mem_size must be an integer >= 1, got 0" and "Traceback" in entry["traceback"]


def test_a_later_success_clears_the_failure_and_kept_results_are_not_rerun(tmp_path):
    with pytest.raises(RunsFailed):
        run_all(LocalScheduler(), [GOOD, BAD], tmp_path)
    fixed = RunConfig("split-digits", "kd-replay", seed=0, epochs=1, max_train_per_experience=40,
                      method_args={"mem_size": 20})
    assert result_path(tmp_path, fixed) == result_path(tmp_path, BAD)  # the same run, now valid
    outcomes = run_all(LocalScheduler(), [GOOD, fixed], tmp_path)
    assert [(o.config.method, o.ran, o.ok) for o in outcomes] == [("naive", False, True), ("kd-replay", True, True)]
    assert not (tmp_path / FAILURES_FILE).exists()


def test_local_scheduler_rejects_a_bad_job_count():
    with pytest.raises(ValueError, match="jobs must be an integer >= 1, got 0"):
        LocalScheduler(0)


@pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks on Windows")
@pytest.mark.parametrize("jobs", [1, 2])
def test_a_run_another_process_holds_goes_last_and_its_result_is_kept(tmp_path, jobs):
    first, *rest = [RunConfig("split-digits", "naive", seed=s, epochs=1, max_train_per_experience=40) for s in range(3)]
    out = tmp_path / "out"
    run_all(LocalScheduler(), [first], out)
    path = result_path(out, first)
    holder, saved = hold_finished_run(path, lock_path(out, first), [result_path(out, c) for c in rest])
    seen = []
    try:
        outcomes = run_all(LocalScheduler(jobs), [first, *rest], out, seen.append)
    finally:
        holder.wait()
    assert [o.config.seed for o in seen][-1] == 0  # the held run came back last
    assert [(o.config.seed, o.ran) for o in outcomes] == [(0, False), (1, True), (2, True)]
    assert path.read_bytes() == saved.read_bytes()  # the other process's result, kept
    assert not any(o.busy for o in seen)
