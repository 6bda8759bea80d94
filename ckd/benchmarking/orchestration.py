"""One plan, one orchestrator: what to run (configs, output folder) and where (this machine's
processes, Ray, Ray Tune trials, or one vectorized pass per group of seeds), run by the
scheduler the plan names, every outcome recorded the same way (``failures.json``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ckd.benchmarking.loggers import check_loggers
from ckd.benchmarking.ray_scheduler import RayScheduler
from ckd.benchmarking.run_config import RunConfig
from ckd.benchmarking.scheduling import LocalScheduler, RunOutcome, Scheduler, run_all
from ckd.benchmarking.tune_scheduler import EARLY_STOPPING, TuneScheduler
from ckd.benchmarking.vectorized_runs import VectorizedScheduler

__all__ = ["Plan", "make_scheduler", "run_plan"]


@dataclass(frozen=True)
class Plan:
    """Runs and where they run.

    ``jobs``: processes on this machine; ``ray_address``: run on Ray instead (``"local"``,
    ``"auto"`` or ``ray://host:port``), as Ray Tune trials with ``tune`` (``early_stopping``:
    ``None`` or ``"asha"``; with ``gpus_per_run`` GPUs for a CUDA run); ``vectorize``: the
    seeds of each otherwise equal group train as one stacked model, in this process.
    ``force``: re-run configs whose result exists; ``loggers``: Avalanche loggers by name.
    """

    configs: tuple[RunConfig, ...]
    out_dir: Path
    jobs: int = 1
    ray_address: str | None = None
    tune: bool = False
    early_stopping: str | None = None
    gpus_per_run: float = 1.0
    vectorize: bool = False
    data_root: str | os.PathLike | None = None
    force: bool = False
    loggers: tuple[str, ...] = ()
    progress: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "configs", tuple(self.configs))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        object.__setattr__(self, "loggers", check_loggers(self.loggers))
        if self.early_stopping not in EARLY_STOPPING:
            raise ValueError(f"early_stopping must be one of {EARLY_STOPPING}, got {self.early_stopping!r}")
        if self.early_stopping is not None and self.ray_address is None:
            raise ValueError("--scheduler asha needs --ray: early stopping runs on Ray Tune")
        if self.ray_address is not None and self.jobs != 1:
            raise ValueError("--jobs is for runs on this machine; with Ray the cluster's CPUs decide, drop --jobs")
        if self.vectorize and self.ray_address is not None:
            raise ValueError("vectorize runs the seeds in one process; run it without Ray")


def make_scheduler(plan: Plan) -> Scheduler:
    """The scheduler ``plan`` asks for."""
    common = dict(data_root=plan.data_root, force=plan.force, loggers=plan.loggers, progress=plan.progress)
    if plan.vectorize:
        return VectorizedScheduler(**common)
    if plan.ray_address is not None:
        if plan.tune:
            return TuneScheduler(plan.ray_address, early_stopping=plan.early_stopping, gpus_per_run=plan.gpus_per_run,
                                 **common)
        return RayScheduler(plan.ray_address, gpus_per_run=plan.gpus_per_run, **common)
    return LocalScheduler(plan.jobs, **common)


def run_plan(plan: Plan, on_outcome: Callable[[RunOutcome], None] | None = None) -> list[RunOutcome]:
    """Run every config of ``plan``, calling ``on_outcome`` as each finishes; the outcomes in
    the order of ``plan.configs``. Raises ``ckd.common.errors.RunsFailed`` once all have
    finished if any failed (each is in ``failures.json``)."""
    return run_all(make_scheduler(plan), plan.configs, plan.out_dir, on_outcome)
