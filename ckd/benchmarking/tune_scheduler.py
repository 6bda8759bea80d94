"""Sweeps on Ray Tune: every run of the grid a trial that reports its average validation
accuracy after each experience, so that an early-stopping scheduler (ASHA) can end
poor settings before their last experience.

Files are those of :class:`ckd.benchmarking.ray_scheduler.RayScheduler`: the driver skips runs
whose result exists, writes each finished run's JSON atomically as it arrives, and
records failures in ``failures.json``; a stopped run writes nothing and is not a failure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckd.benchmarking.ray_scheduler import LOCAL, RayScheduler
from ckd.benchmarking.scheduling import RunOutcome, _builtin_filters
from ckd.common.errors import one_line
from ckd.common.files import write_json_atomic

if TYPE_CHECKING:
    from ckd.benchmarking.run_config import RunConfig

# The run config's module imports the training stack: driver and workers import it when a
# schedule runs (a worker after taking the driver's warning filters), not with this module.

__all__ = ["EARLY_STOPPING", "TuneScheduler"]

EARLY_STOPPING = (None, "asha")
METRIC = "val_accuracy"  # mean accuracy over the experiences seen so far, on the validation split


class TuneScheduler(RayScheduler):
    """A :class:`ckd.benchmarking.ray_scheduler.RayScheduler` whose runs are Ray Tune trials.

    ``early_stopping``: ``None`` runs every trial to its end; ``"asha"`` lets
    asynchronous successive halving stop the trials whose validation accuracy, after
    the same number of experiences, trails the others (rungs after 1, 2, 4, …
    experiences, keeping the best half). Every trial asks for the CPUs and GPUs of the
    first config (a sweep's runs share them). Other settings as :class:`RayScheduler`.
    """

    def __init__(self, address: str = LOCAL, *, early_stopping: str | None = None, **kwargs: Any) -> None:
        if early_stopping not in EARLY_STOPPING:
            raise ValueError(f"early_stopping must be one of {EARLY_STOPPING}, got {early_stopping!r}")
        super().__init__(address, **kwargs)
        self.early_stopping = early_stopping

    def _remote_outcomes(self, ray, todo: list[RunConfig], n_configs: int, out_dir: Path) -> Iterator[RunOutcome]:
        """The runs of ``todo`` as the trials of one Tune grid, their result locks held by the driver;
        those another process is running are left out of it, waited for and kept (or, with no result
        written, run as Ray tasks, :class:`RayScheduler`)."""
        claimed, kept, busy = self._claim(todo, out_dir)
        with ExitStack() as held:
            for _, hold in claimed:
                held.enter_context(hold)
            yield from kept
            if claimed:
                yield from self._grid_outcomes([config for config, _ in claimed], out_dir)
        if busy:
            yield from super()._remote_outcomes(ray, busy, n_configs, out_dir)

    def _grid_outcomes(self, todo: list[RunConfig], out_dir: Path) -> Iterator[RunOutcome]:
        """The runs of ``todo`` as the trials of one Tune grid."""
        from ray import tune

        from ckd.benchmarking.run_config import result_path

        written: dict[int, Path] = {}

        class WriteResults(tune.Callback):
            """In the driver: each finished run's JSON, written as its last report arrives."""

            def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
                if "result" in result:
                    index = trial.config["index"]
                    written[index] = write_json_atomic(result_path(out_dir, todo[index]), json.loads(result["result"]))

        first = todo[0]
        resources = {"cpu": first.threads, "gpu": self.gpus_per_run if first.device.startswith("cuda") else 0}
        trainable = tune.with_resources(
            tune.with_parameters(
                _trial, configs=[dataclasses.asdict(c) for c in todo],
                data_root=None if self.data_root is None else os.fspath(self.data_root), filters=_builtin_filters(),
            ),
            resources,
        )
        scheduler = None
        if self.early_stopping == "asha":
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=1, reduction_factor=2, max_t=1000)
        with tempfile.TemporaryDirectory(prefix="ckd-tune-") as storage:
            tuner = tune.Tuner(
                trainable,
                param_space={"index": tune.grid_search(list(range(len(todo))))},
                tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler),
                run_config=tune.RunConfig(
                    name="ckd-sweep", storage_path=storage, verbose=1 if self.progress else 0,
                    callbacks=[WriteResults()],
                ),
            )
            grid = tuner.fit()
            for k in range(len(grid)):
                yield _outcome(grid[k], todo, written, out_dir)


def _outcome(trial_result, todo: list[RunConfig], written: dict[int, Path], out_dir: Path) -> RunOutcome:
    from ckd.benchmarking.run_config import result_path


    index = trial_result.config["index"]
    config = todo[index]
    path = result_path(out_dir, config)
    metrics = trial_result.metrics or {}
    if index in written:
        return RunOutcome(config, path, True)
    if "error" in metrics:
        return RunOutcome(config, path, True, metrics["error"], metrics["traceback"])
    if trial_result.error is not None:
        err = trial_result.error
        return RunOutcome(config, path, True, one_line(err), "".join(traceback.format_exception(err)))
    return RunOutcome(config, path, True, stopped=True)


def _trial(params: dict, *, configs: list[dict], data_root: str | None, filters: list) -> None:
    """On a worker: run ``configs[params["index"]]``, reporting :data:`METRIC` after each
    experience but the last; the last report carries the result (or the error)."""
    import warnings

    from ray import tune

    with warnings.catch_warnings():
        warnings.filters[:] = filters
        from ckd.benchmarking.run_config import RunConfig
        from ckd.benchmarking.runner import run

        def report(i: int, n: int, accuracies: list[float]) -> None:
            if i < n - 1:
                tune.report({METRIC: sum(accuracies[: i + 1]) / (i + 1)})

        try:
            result = run(RunConfig(**configs[params["index"]]), data_root=data_root, on_experience=report)
        except Exception as err:
            tune.report({METRIC: float("nan"), "error": one_line(err), "traceback": traceback.format_exc()})
            return
        tune.report({METRIC: result["final_average_accuracy"], "result": json.dumps(result)})
