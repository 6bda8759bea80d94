"""Runs on Ray: every run is a Ray task, on a local Ray instance or on a cluster.

The driver (this process) decides what to skip, sends each remaining config to a
task, and writes the result JSON it gets back atomically into the output folder,
so workers need no shared filesystem. A task asks for ``config.threads`` CPUs and,
for a CUDA run, ``gpus_per_run`` GPUs (a fraction shares one GPU between small runs).

Ray is an optional dependency (``pip install -e ".[ray]"``), imported when a
schedule starts.
"""

from __future__ import annotations

import dataclasses
import os
import traceback
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckd.benchmarking.scheduling import RunOutcome, Scheduler, _builtin_filters
from ckd.common.errors import one_line
from ckd.common.files import LockHeld, held_lock, write_json_atomic

if TYPE_CHECKING:
    from ckd.benchmarking.run_config import RunConfig

# The run config's module imports the training stack: driver and workers import it when a
# schedule runs (a worker after taking the driver's warning filters), not with this module.

__all__ = ["LOCAL", "RayScheduler", "import_ray"]

LOCAL = "local"  # start a Ray instance on this machine for the schedule, shut it down after


def import_ray():
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError('Ray is not installed: pip install -e ".[ray]"') from None
    return ray


class RayScheduler(Scheduler):
    """Runs every config as a Ray task; outcomes and files as :class:`ckd.benchmarking.scheduling.LocalScheduler`.

    ``address``: ``"local"`` starts a Ray instance on this machine with ``num_cpus``
    CPUs (default: all) and ``num_gpus`` GPUs (default: all Ray finds) and shuts it
    down after the schedule; ``"auto"`` joins the cluster this machine belongs to
    (``ray start --head``); ``"ray://host:10001"`` a remote one. When Ray is
    already initialized in this process, that instance is used and left running.
    ``gpus_per_run``: GPUs each CUDA run asks for (> 0; fractions share a GPU).
    ``progress``: a bar counting finished runs, with the time left.

    Loggers are refused: they would write to the workers' disks.
    """

    def __init__(
        self,
        address: str = LOCAL,
        *,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        gpus_per_run: float = 1.0,
        data_root: str | os.PathLike | None = None,
        force: bool = False,
        loggers: Sequence[str] = (),
        progress: bool = False,
    ) -> None:
        if not isinstance(address, str) or not address:
            raise ValueError(f"address must be 'local', 'auto' or ray://host:port, got {address!r}")
        if not (isinstance(gpus_per_run, (int, float)) and gpus_per_run > 0):
            raise ValueError(f"gpus_per_run must be > 0, got {gpus_per_run!r}")
        if num_cpus is not None and not (isinstance(num_cpus, int) and num_cpus >= 1):
            raise ValueError(f"num_cpus must be an integer >= 1, got {num_cpus!r}")
        if address != LOCAL and (num_cpus is not None or num_gpus is not None):
            raise ValueError("num_cpus and num_gpus size a local Ray instance; a cluster brings its own")
        if loggers:
            raise ValueError("loggers cannot be used with Ray (they would write on the workers); run without --logger")
        super().__init__(data_root=data_root, force=force, loggers=())
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.gpus_per_run = float(gpus_per_run)
        self.progress = progress

    def _split_finished(self, configs: list[RunConfig], out_dir: Path) -> tuple[list[RunOutcome], list[RunConfig]]:
        """The runs whose result exists (kept, unless ``force``) and the ones still to do."""
        from ckd.benchmarking.run_config import has_result, result_path


        kept, todo = [], []
        for config in configs:
            if not self.force and has_result(out_dir, config):
                kept.append(RunOutcome(config, result_path(out_dir, config), False))
            else:
                todo.append(config)
        return kept, todo

    def _outcomes(self, configs: list[RunConfig], out_dir: Path) -> Iterator[RunOutcome]:
        kept, todo = self._split_finished(configs, out_dir)
        yield from kept
        if not todo:
            return
        ray = import_ray()
        started = self._connect(ray)
        try:
            yield from self._remote_outcomes(ray, todo, len(configs), out_dir)
        finally:
            if started:
                ray.shutdown()

    def _remote_outcomes(self, ray, todo: list[RunConfig], n_configs: int, out_dir: Path) -> Iterator[RunOutcome]:
        """The runs of ``todo``, each a Ray task, as they finish (``n_configs``: the schedule's size)."""
        from ckd.benchmarking.run_config import has_result, lock_path, result_path, wait_notice

        bar = _bar(n_configs, n_configs - len(todo), self.progress)
        task = ray.remote(_run_task)
        pending: dict[Any, RunConfig] = {}
        locks: dict[Any, ExitStack] = {}  # each running task's result lock, held here by the driver
        data_root = None if self.data_root is None else os.fspath(self.data_root)
        filters = _builtin_filters()

        def submit(config: RunConfig):
            gpus = self.gpus_per_run if config.device.startswith("cuda") else 0
            return task.options(num_cpus=config.threads, num_gpus=gpus, max_retries=0).remote(
                dataclasses.asdict(config), data_root, filters,
            )

        def finished(ref) -> RunOutcome:
            outcome = self._finish(ray, ref, pending.pop(ref), out_dir)
            locks.pop(ref).close()
            if bar is not None:
                bar.update(1)
            return outcome

        try:
            claimed, kept, busy = self._claim(todo, out_dir)  # busy: after every other run, waited for
            for config, hold in claimed:
                ref = submit(config)
                pending[ref], locks[ref] = config, hold
            yield from kept
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                yield finished(ref)
            for config in busy:
                hold = ExitStack()
                hold.enter_context(held_lock(lock_path(out_dir, config), on_wait=wait_notice(out_dir, config)))
                if not self.force and has_result(out_dir, config):
                    hold.close()
                    yield RunOutcome(config, result_path(out_dir, config), False)
                    continue
                ref = submit(config)
                pending[ref], locks[ref] = config, hold
                ray.wait([ref], num_returns=1)
                yield finished(ref)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            for hold in locks.values():
                hold.close()
            if bar is not None:
                bar.close()

    def _claim(self, configs: list[RunConfig], out_dir: Path
               ) -> tuple[list[tuple[RunConfig, ExitStack]], list[RunOutcome], list[RunConfig]]:
        """Each run's result lock taken without waiting: the runs now held, with their locks; those
        whose result was written since the driver looked (kept, unless ``force``); those another
        process holds."""
        from ckd.benchmarking.run_config import has_result, lock_path, result_path

        claimed, kept, busy = [], [], []
        for config in configs:
            hold = ExitStack()
            try:
                hold.enter_context(held_lock(lock_path(out_dir, config), wait=False))
            except LockHeld:
                busy.append(config)
                continue
            if not self.force and has_result(out_dir, config):
                hold.close()
                kept.append(RunOutcome(config, result_path(out_dir, config), False))
            else:
                claimed.append((config, hold))
        return claimed, kept, busy

    def _connect(self, ray) -> bool:
        """Initialize Ray unless it already is; whether this call started it."""
        if ray.is_initialized():
            return False
        if self.address == LOCAL:
            ray.init(address="local", num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                     include_dashboard=False, logging_level="WARNING")
        else:
            ray.init(address=self.address, logging_level="WARNING")
        return True

    @staticmethod
    def _finish(ray, ref, config: RunConfig, out_dir: Path) -> RunOutcome:
        from ckd.benchmarking.run_config import result_path


        path = result_path(out_dir, config)
        try:
            result, error, trace = ray.get(ref)
        except Exception as err:  # the task itself died (worker killed, node lost)
            return RunOutcome(config, path, True, one_line(err), "".join(traceback.format_exception(err)))
        if error is not None:
            return RunOutcome(config, path, True, error, trace)
        write_json_atomic(path, result)
        return RunOutcome(config, path, True)


def _run_task(
    config: dict[str, Any], data_root: str | None, filters: list,
) -> tuple[dict | None, str | None, str | None]:
    """On a worker, with the driver's warning filters: ``(result, None, None)``, or
    ``(None, error, traceback)`` when the run fails. ``config``: the fields of a
    ``RunConfig``, which is built here, after the filters (its module imports the training stack)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filters[:] = filters
        from ckd.benchmarking.run_config import RunConfig
        from ckd.benchmarking.runner import run

        try:
            return run(RunConfig(**config), data_root=data_root), None, None
        except Exception as err:
            return None, one_line(err), traceback.format_exc()


def _bar(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="runs", unit="run", dynamic_ncols=True)
