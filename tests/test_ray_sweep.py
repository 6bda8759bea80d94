"""TuneScheduler: a sweep as Ray Tune trials on a local Ray instance (skipped without Ray)."""

import json

import pytest

pytest.importorskip("ray")

from ckd.benchmarking.run_config import RunConfig  # noqa: E402
from ckd.benchmarking.scheduling import LocalScheduler  # noqa: E402
from ckd.benchmarking.sweep import run_sweep  # noqa: E402
from ckd.benchmarking.tune_scheduler import TuneScheduler  # noqa: E402

BASE = RunConfig("split-digits", "kd-replay", epochs=1, validation_fraction=0.1, max_train_per_experience=60,
                 method_args={"mem_size": 20})
VOLATILE = ("wall_time_s", "wall_time_per_experience_s", "peak_cpu_memory_mb")


def _stable(path) -> dict:
    result = json.loads(path.read_text())
    return {k: v for k, v in result.items() if k not in VOLATILE}


@pytest.mark.slow
def test_a_sweep_on_tune_gives_the_serial_results_and_recommendation(tmp_path, local_ray):
    serial = run_sweep(BASE, [1.0, 4.0], [1.0], [0], out_dir=tmp_path / "serial", scheduler=LocalScheduler())
    tuned = run_sweep(BASE, [1.0, 4.0], [1.0], [0], out_dir=tmp_path / "tune", scheduler=TuneScheduler())
    names = sorted(p.name for p in (tmp_path / "serial").glob("*__seed0.json"))
    assert len(names) == 2 and names == sorted(p.name for p in (tmp_path / "tune").glob("*__seed0.json"))
    for name in names:
        assert _stable(tmp_path / "serial" / name) == _stable(tmp_path / "tune" / name)
    assert json.loads(serial.summary_path.read_text()) == json.loads(tuned.summary_path.read_text())
    assert tuned.figure_path.is_file()


@pytest.mark.slow
def test_asha_keeps_the_finished_runs_and_leaves_the_stopped_ones_out(tmp_path, local_ray):
    seen = []
    sweep = run_sweep(BASE, [0.5, 1.0, 4.0, 16.0], [1.0], [0], out_dir=tmp_path,
                      scheduler=TuneScheduler(early_stopping="asha"), on_outcome=seen.append)
    finished = [o for o in seen if not o.stopped]
    assert len(seen) == 4 and all(o.ok for o in seen) and finished
    assert all(o.path.is_file() for o in finished) and not any(o.path.exists() for o in seen if o.stopped)
    rows = json.loads(sweep.summary_path.read_text())["rows"]
    assert sorted(r["temperature"] for r in rows) == sorted(o.config.method_args["temperature"] for o in finished)


def test_tune_scheduler_rejects_an_unknown_early_stopping():
    with pytest.raises(ValueError, match="early_stopping must be one of"):
        TuneScheduler(early_stopping="hyperband")
