"""Where runs execute: a scheduler takes run configs and an output folder, and yields
each run's outcome as it finishes.

Every run writes its own result JSON (``ckd.benchmarking.runner.run_to_file``: kept, not re-run,
when a result with the same config is already there). A run that fails does not stop
the others: its one-line error and traceback go to ``failures.json`` in the output
folder, keyed by result file name, and the entry is removed once that run succeeds.
A run that another process is running (its result's lock is held: a suite started twice)
is put back at the end of the queue, and waited for only when nothing else is left, so
two processes on one suite share out its runs.

:class:`LocalScheduler` runs on this machine, one process per parallel job. Another
backend (a cluster) subclasses :class:`Scheduler` and implements ``_outcomes``,
calling :func:`execute` wherever the run lands.

The training stack (``ckd.benchmarking.runner``, Avalanche) is imported when a run executes, not
with this module: a worker process first takes this process's warning filters.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import traceback
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ckd.common.errors import RunsFailed, one_line
from ckd.common.files import LockHeld, write_json_atomic

if TYPE_CHECKING:
    from ckd.benchmarking.run_config import RunConfig

# The run config's and the runner's modules import the training stack: imported when a run is
# scheduled, so that a sweep's module (and reading its results) stays light.

__all__ = [
    "FAILURES_FILE",
    "LocalScheduler",
    "RunOutcome",
    "RunsFailed",
    "Scheduler",
    "execute",
    "run_all",
]

FAILURES_FILE = "failures.json"


@dataclass(frozen=True)
class RunOutcome:
    """What became of one config.

    ``path``: its result JSON (written, or kept from before when ``ran`` is False);
    on failure, where the result would have gone. ``error``: one line saying what went
    wrong, ``None`` on success; ``traceback``: the full Python traceback of the failure.
    ``stopped``: a sweep's early-stopping scheduler ended the run before its last
    experience (not a failure; no result file).
    """

    config: RunConfig
    path: Path
    ran: bool
    error: str | None = None
    traceback: str | None = None
    stopped: bool = False
    busy: bool = False  # another process holds the run (execute(wait=False)); a scheduler runs it again later

    @property
    def ok(self) -> bool:
        return self.error is None


def execute(
    config: RunConfig,
    out_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = False,
    loggers: Sequence[str] = (),
    wait: bool = True,
) -> RunOutcome:
    """Run ``config`` into ``out_dir`` (unless ``force``, an identical finished result is kept),
    with the Avalanche ``loggers`` named (``ckd.benchmarking.runner.run_to_file``).

    A failed run is returned as an outcome with its error, not raised, so that a
    scheduler carries on with the others; ``KeyboardInterrupt`` still stops it. With
    ``wait=False`` a run another process is running comes back at once as ``busy``.
    """
    from ckd.benchmarking.run_config import result_path
    from ckd.benchmarking.runner import run_to_file

    try:
        path, ran = run_to_file(config, out_dir, data_root, progress, skip_existing=not force, loggers=loggers,
                                wait=wait)
    except LockHeld:
        return RunOutcome(config, result_path(out_dir, config), False, busy=True)
    except Exception as err:
        return RunOutcome(config, result_path(out_dir, config), True, one_line(err), traceback.format_exc())
    return RunOutcome(config, path, ran)


class Scheduler(ABC):
    """Runs configs into an output folder; see the module docstring.

    ``data_root``: folder holding the datasets (else ``$CKD_DATA_ROOT``);
    ``force``: re-run configs whose result already exists; ``loggers``: names of
    Avalanche loggers for every run (``ckd.benchmarking.loggers.LOGGERS``).
    """

    def __init__(
        self, *, data_root: str | os.PathLike | None = None, force: bool = False, loggers: Sequence[str] = (),
    ) -> None:
        self.data_root = data_root
        self.force = force
        self.loggers = tuple(loggers)

    def run(self, configs: Sequence[RunConfig], out_dir: str | os.PathLike) -> Iterator[RunOutcome]:
        """Each config's outcome, in the order the runs finish; ``failures.json`` is
        updated after every outcome, so an interrupted schedule leaves it current."""
        out = Path(out_dir)
        for outcome in self._outcomes(list(configs), out):
            _record(out / FAILURES_FILE, [outcome])
            yield outcome

    @abstractmethod
    def _outcomes(self, configs: list[RunConfig], out_dir: Path) -> Iterable[RunOutcome]:
        """Execute every config (see :func:`execute`) and yield the outcomes as they come."""


def run_all(
    scheduler: Scheduler,
    configs: Sequence[RunConfig],
    out_dir: str | os.PathLike,
    on_outcome: Callable[[RunOutcome], None] | None = None,
) -> list[RunOutcome]:
    """Run every config with ``scheduler``, calling ``on_outcome`` as each finishes; the
    outcomes in the order of ``configs``. Raises :class:`RunsFailed` once all have
    finished if any failed."""
    from ckd.benchmarking.run_config import result_path

    rank = {result_path(out_dir, c).name: k for k, c in enumerate(configs)}
    outcomes = []
    for outcome in scheduler.run(configs, out_dir):
        if on_outcome is not None:
            on_outcome(outcome)
        outcomes.append(outcome)
    outcomes.sort(key=lambda o: rank[o.path.name])
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise RunsFailed(len(failed), len(outcomes), Path(out_dir) / FAILURES_FILE)
    return outcomes


class LocalScheduler(Scheduler):
    """Runs on this machine: in this process with ``jobs=1`` (with a progress bar when
    ``progress``), else in ``jobs`` spawned worker processes that die with this one."""

    def __init__(
        self,
        jobs: int = 1,
        *,
        data_root: str | os.PathLike | None = None,
        force: bool = False,
        loggers: Sequence[str] = (),
        progress: bool = False,
    ) -> None:
        if not isinstance(jobs, int) or jobs < 1:
            raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
        super().__init__(data_root=data_root, force=force, loggers=loggers)
        self.jobs = jobs
        self.progress = progress

    def _outcomes(self, configs: list[RunConfig], out_dir: Path) -> Iterator[RunOutcome]:
        from ckd.benchmarking.run_config import result_path

        if self.jobs == 1 or len(configs) <= 1:
            busy = []
            for config in configs:
                outcome = execute(config, out_dir, self.data_root, self.force, self.progress, self.loggers, wait=False)
                if outcome.busy:
                    busy.append(config)
                else:
                    yield outcome
            for config in busy:  # nothing else left: wait for the other process, then keep its result
                yield execute(config, out_dir, self.data_root, self.force, self.progress, self.loggers)
            return
        context = multiprocessing.get_context("spawn")  # fork would copy this process's threads and CUDA state
        pool = ProcessPoolExecutor(
            min(self.jobs, len(configs)), mp_context=context, initializer=_start_worker, initargs=(_builtin_filters(),),
        )

        def submit(config: RunConfig, wait: bool) -> Future:
            return pool.submit(execute, config, out_dir, self.data_root, self.force, False, self.loggers, wait)

        try:
            pending: dict[Future, RunConfig] = {submit(config, False): config for config in configs}
            while pending:
                future = next(as_completed(pending))
                config = pending.pop(future)
                try:
                    outcome = future.result()
                except Exception as err:  # the worker itself died (killed, out of memory)
                    yield RunOutcome(config, result_path(out_dir, config), True, one_line(err),
                                     "".join(traceback.format_exception(err)))
                    continue
                if outcome.busy:  # behind every run still queued; then waited for
                    pending[submit(config, True)] = config
                else:
                    yield outcome
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _builtin_filters() -> list:
    """This process's warning filters on Python's own warning classes (a filter on a
    library's class would import that library in the worker before the filters apply)."""
    return [f for f in warnings.filters if f[2].__module__ == "builtins"]


def _start_worker(filters: list) -> None:
    """A worker takes the warning filters of the process that started it (see
    :func:`_builtin_filters`), and dies with it: a killed schedule must not leave
    workers running (Linux: ``PR_SET_PDEATHSIG``)."""
    warnings.filters[:] = filters
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _record(path: Path, outcomes: Iterable[RunOutcome]) -> None:
    """Add the failed outcomes to the failures file and drop the entries of the ones that
    succeeded; the file is removed once it has no entry left."""
    try:
        failures = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        failures = {}
    before = dict(failures)
    for outcome in outcomes:
        key = outcome.path.name
        if outcome.ok:
            failures.pop(key, None)
        else:
            c = outcome.config
            failures[key] = {
                "stream": c.stream, "label": c.name, "seed": c.seed, "config": c.resolved(),
                "error": outcome.error, "traceback": outcome.traceback,
            }
    if failures == before:
        return
    if failures:
        write_json_atomic(path, failures)
    else:
        path.unlink(missing_ok=True)
