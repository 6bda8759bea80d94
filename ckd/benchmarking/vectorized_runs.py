"""Several seeds of one run in one pass (:mod:`ckd.engines.vectorized`): which runs may,
building each seed's stream and model as :func:`ckd.benchmarking.runner.run` does, scoring
each seed and writing its result file."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch import Tensor

from ckd.benchmarking.methods import resolve_method_args
from ckd.benchmarking.run_config import PER_EXPERIENCE_ARGS, has_result, lock_path, result_path, wait_notice
from ckd.benchmarking.runner import result_record, seed_everything
from ckd.benchmarking.scheduling import RunOutcome, Scheduler
from ckd.benchmarking.scoring import AccuracyEvaluator
from ckd.common.errors import one_line
from ckd.common.files import held_lock, write_json_atomic
from ckd.data.models import make_model
from ckd.data.streams import make_stream
from ckd.distillation.teachers import DEFAULT_TEACHER
from ckd.engines.tensor_data import dataset_tensors
from ckd.engines.vectorized import VectorizedPass
from ckd.engines.vectorized_replay import check_replay_args

__all__ = [
    "VECTORIZED_METHODS",
    "VectorizedScheduler",
    "VectorizedTraining",
    "check_vectorizable",
    "run_vectorized",
    "run_vectorized_to_files",
    "seed_groups",
]


VECTORIZED_METHODS = ("naive", "replay", "kd-replay", "kd-replay-cached", "kd-ema")


# kd-* settings vectorize implements, and the ones it needs at a given value (parts it does not stack).
_KD_SETTINGS = {"mem_size", "replay_batch_size", "alpha", "temperature", "beta", "policy", "teacher",
                "known_classes_only", "ensemble", "ema_half_life", "current_experience_targets"}


_KD_FIXED = {"n_teachers": 1, "logit_weight": 0.0, "current_alpha": 0.0, "current_known_classes_only": True,
             "current_classes_only": False, "weight_aligning": False}


_TEACHERS = ("snapshot", "cached", "own", "ema")


def check_vectorizable(configs: Sequence) -> None:
    """Raise a one-line ``ValueError`` naming what to change when ``configs`` cannot
    run as one vectorized pass."""
    if not configs:
        raise ValueError("vectorize needs at least one run")
    first = configs[0]
    seeds = [c.seed for c in configs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"vectorize needs distinct seeds, got {seeds}")
    for c in configs[1:]:
        if dataclasses.replace(c, seed=first.seed) != first:
            raise ValueError(
                f"vectorize trains runs that differ only in their seed; {first.name} and {c.name} on "
                f"{first.stream} / {c.stream} differ in more: run them without --vectorize or in separate groups"
            )
    method = first.method
    if method not in VECTORIZED_METHODS:
        raise ValueError(
            f"method {method!r} cannot be vectorized (vectorize covers {', '.join(VECTORIZED_METHODS)}): "
            "run it without --vectorize"
        )
    refusals = {
        "loader": (first.loader != "tensor", "loader='tensor'"),
        "amp": (first.amp is not None, "no mixed precision (amp)") if hasattr(first, "amp") else (False, ""),
        "eval_every": (first.eval_every != 0, "eval_every=0"),
        "cuda_graphs": (first.cuda_graphs, "no CUDA graphs (cuda_graphs)"),
        "model": (first.model not in ("mlp", "cnn"), "model 'mlp' or 'cnn'"),
    }
    for name, (refused, needed) in refusals.items():
        if refused:
            raise ValueError(f"vectorize needs {needed}, got {name}={getattr(first, name)!r}: run without --vectorize")
    if method == "naive":
        return
    args = resolve_method_args(method, first.method_args)
    if method == "replay":
        check_replay_args(args)
        return
    # A setting vectorize does not know may change what even its default does: refuse it.
    unknown = sorted(set(args) - _KD_SETTINGS - set(_KD_FIXED))
    if unknown:
        raise ValueError(f"vectorize does not implement the {method} setting(s) {unknown}: run without --vectorize")
    for name, value in _KD_FIXED.items():
        if name in args and args[name] != value:
            raise ValueError(
                f"vectorize needs {name}={value!r} (got {args[name]!r}): that part is not stacked; run without --vectorize"
            )
    teacher = "cached" if method == "kd-replay-cached" else args.get("teacher", DEFAULT_TEACHER)
    if teacher not in _TEACHERS:
        raise ValueError(f"vectorize covers the teachers {_TEACHERS}, got teacher={teacher!r}: run without --vectorize")


class VectorizedTraining:
    """The seeds of ``configs`` (one run per seed, otherwise equal) as one stacked
    model: built as :func:`ckd.benchmarking.runner.run` builds each seed's run, then trained one
    experience at a time (:meth:`train_experience`) and scored per seed (:meth:`score`)."""

    def __init__(self, configs: Sequence, data_root: str | os.PathLike | None = None) -> None:
        check_vectorizable(configs)
        self.configs = list(configs)
        first = self.first = self.configs[0]
        self.seeds = [c.seed for c in configs]
        self.device = torch.device(first.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but torch.cuda.is_available() is False")
        torch.set_num_threads(first.threads)
        self.streams, self.models = [], []
        for config in configs:  # as ckd.benchmarking.runner.run builds them, seed by seed
            seed_everything(config.seed)
            stream_args = dict(
                seed=config.seed, data_root=data_root, n_experiences=config.n_experiences,
                task_labels=config.task_labels, validation_fraction=config.validation_fraction,
                max_train_per_experience=config.max_train_per_experience,
                max_test_per_experience=config.max_test_per_experience,
            )
            if hasattr(config, "checksum"):
                stream_args["checksum"] = config.checksum
            stream = make_stream(config.stream, **stream_args)
            if getattr(stream, "augmentation", None) is not None:
                raise ValueError(f"vectorize does not apply {config.stream}'s training augmentation: run without --vectorize")
            self.streams.append(stream)
            self.models.append(make_model(config.model, stream.input_shape, stream.n_classes))
        self.evaluators = [AccuracyEvaluator(s, self.device, first.eval_batch_size) for s in self.streams]
        self.train_streams = [s.benchmark.train_stream for s in self.streams]
        self.n_experiences = len(self.train_streams[0])
        self.iterations = [math.ceil(len(e.dataset) / first.batch_size) * first.epochs for e in self.train_streams[0]]
        args = resolve_method_args(first.method, first.method_args)
        for key in PER_EXPERIENCE_ARGS:
            value = args.get(key)
            if isinstance(value, (list, tuple)) and len(value) != self.n_experiences:
                raise ValueError(
                    f"{key} is a per-experience list of {len(value)} values but {first.stream} has "
                    f"{self.n_experiences} experiences"
                )
        half_life = getattr(first, "eval_ema_half_life", 0.0) or 0.0
        self.engine = VectorizedPass(self.models, first.method, args, self.seeds, batch_size=first.batch_size,
                                     epochs=first.epochs, lr=first.lr, iterations=self.iterations, device=self.device,
                                     eval_ema_half_life=half_life)
        self.net, self.eval_ema = self.engine.net, self.engine.eval_ema
        self.matrices: list[list[list[float]]] = [[] for _ in configs]
        self.task_matrices: list[list[list[float]]] = [[] for _ in configs]
        self.trained_matrices: list[tuple[list, list]] = [([], []) for _ in configs]  # with an EMA scored
        self.diverged_at: list[int | None] = [None] * len(configs)

    def _experience_data(self, i: int) -> list[tuple[Tensor, Tensor, Tensor]]:
        raw = []
        for train in self.train_streams:
            tensors = dataset_tensors(train[i].dataset.train())
            if tensors is None:
                raise ValueError(f"experience {i} of {self.first.stream} is not in-memory tensors: run without --vectorize")
            raw.append(tuple(t.to(self.device) for t in tensors))
        sizes = {x.shape[0] for x, _, _ in raw}
        if len(sizes) > 1:
            raise ValueError(
                f"the seeds' experience {i} differ in size {sorted(sizes)}: vectorize needs equal sizes "
                "(no validation split or subsampling that depends on the seed)"
            )
        return raw

    def train_experience(self, i: int, on_iteration=None) -> None:
        """Train every seed on experience ``i``, in each seed's own data order."""
        task = int(getattr(self.train_streams[0][i], "task_label", 0))
        self.engine.train_experience(i, self._experience_data(i), task, self.streams[0].classes_per_experience[i],
                                     on_iteration)

    def score(self) -> None:
        """Append each seed's accuracies on every test experience (a row of its matrix),
        scoring the EMA of its weights when ``eval_ema_half_life > 0``, as the runner does."""
        for s, (model, evaluator) in enumerate(zip(self.models, self.evaluators)):
            model.to(self.device)
            self.net.copy_into(s, model)
            if self.diverged_at[s] is None and not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                self.diverged_at[s] = len(self.matrices[s])
            if self.eval_ema is not None:
                trained_row, trained_task_row = evaluator.accuracies(model)
                self.trained_matrices[s][0].append(trained_row)
                self.trained_matrices[s][1].append(trained_task_row)
                self.net.copy_into(s, model, self.eval_ema.params)
            row, task_row = evaluator.accuracies(model)
            self.matrices[s].append(row)
            self.task_matrices[s].append(task_row)

    def records(self, wall: float, times: Sequence[float]) -> list[dict]:
        """One result record per seed, as :func:`ckd.benchmarking.runner.run` writes it, marked vectorized."""
        n = len(self.configs)
        return [
            {
                **result_record(
                    config, stream, self.matrices[s], self.task_matrices[s],
                    scored_model="model" if self.eval_ema is None else "ema",
                    trained_weights=None if self.eval_ema is None else self.trained_matrices[s],
                    diverged_at=self.diverged_at[s],
                    curve=None,
                    diagnostics=None,
                    wall=wall / n,
                    times=[t / n for t in times],
                    iterations=self.iterations,
                    device=self.device,
                ),
                "vectorized": True,
                "vectorized_seeds": self.seeds,
                "vectorized_wall_time_s": wall,
            }
            for s, (config, stream) in enumerate(zip(self.configs, self.streams))
        ]


def run_vectorized(configs: Sequence, data_root: str | os.PathLike | None = None, progress: bool = False) -> list[dict]:
    """Train ``configs`` (one run per seed, otherwise equal) in one pass; one result
    record per config, in order, as :func:`ckd.benchmarking.runner.run` returns them.

    ``wall_time_s`` of each record is the pass's wall time divided by the number of
    seeds (``vectorized_wall_time_s``: the whole pass)."""
    training = VectorizedTraining(configs, data_root)
    first, device = training.first, training.device
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(training.iterations), desc=f"{first.stream} {first.name} seeds {training.seeds}",
                   unit="it", leave=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    start = time.perf_counter()
    try:
        for i in range(training.n_experiences):
            t0 = time.perf_counter()
            training.train_experience(i, on_iteration=None if bar is None else (lambda: bar.update(1)))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
            training.score()
    finally:
        if bar is not None:
            bar.close()
    return training.records(time.perf_counter() - start, times)


def run_vectorized_to_files(
    configs: Sequence,
    out_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    progress: bool = False,
    skip_existing: bool = True,
) -> list[tuple[Path, bool]]:
    """:func:`run_vectorized` writing each seed's ``ckd.benchmarking.run_config.result_path`` (atomically);
    with ``skip_existing``, seeds whose result exists with the same config are not re-run
    (the others still run together). Returns ``(path, ran)`` per config. The pass holds its runs'
    locks (:func:`ckd.benchmarking.run_config.lock_path`), so runs another process is running are
    waited for and kept, not trained twice."""
    paths = [result_path(out_dir, c) for c in configs]
    with held_locks(configs, out_dir):
        todo = [c for c in configs if not (skip_existing and has_result(out_dir, c))]
        if todo:
            for config, record in zip(todo, run_vectorized(todo, data_root=data_root, progress=progress)):
                write_json_atomic(result_path(out_dir, config), record)
    ran = {id(c) for c in todo}
    return [(path, id(config) in ran) for config, path in zip(configs, paths)]


@contextmanager
def held_locks(configs: Sequence, out_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the locks of a pass's runs (:func:`ckd.benchmarking.run_config.lock_path`), waiting for
    any another process holds; taken in sorted order, so two processes taking overlapping sets
    cannot each wait for the other."""
    with ExitStack() as stack:
        for config in sorted(configs, key=lambda c: lock_path(out_dir, c)):
            stack.enter_context(held_lock(lock_path(out_dir, config), on_wait=wait_notice(out_dir, config)))
        yield


def seed_groups(configs: Sequence) -> list[list]:
    """``configs`` grouped by everything but their seed, in order of first appearance."""
    groups: dict[str, list] = {}
    for c in configs:
        groups.setdefault(json.dumps(dataclasses.replace(c, seed=0).resolved(), sort_keys=True), []).append(c)
    return list(groups.values())


class VectorizedScheduler(Scheduler):
    """Runs each group of configs that differ only in their seed as one vectorized pass
    (:func:`run_vectorized`), one group after another, in this process. Every group is
    checked (:func:`check_vectorizable`) before any runs: one that cannot vectorize is refused
    in one line. A pass that fails is a failed outcome for each of its group's configs."""

    def __init__(self, *, data_root: str | os.PathLike | None = None, force: bool = False,
                 loggers: Sequence[str] = (), progress: bool = False) -> None:
        if loggers:
            raise ValueError("loggers cannot be used with vectorize (the pass has no Avalanche strategy): "
                             "run without --logger or without --vectorize")
        super().__init__(data_root=data_root, force=force)
        self.progress = progress

    def _outcomes(self, configs: list, out_dir: Path) -> Iterator[RunOutcome]:
        groups = seed_groups(configs)
        for group in groups:
            check_vectorizable(group)
        for group in groups:
            with held_locks(group, out_dir):  # another process's runs finish first
                todo = []
                for config in group:
                    if not self.force and has_result(out_dir, config):
                        yield RunOutcome(config, result_path(out_dir, config), False)
                    else:
                        todo.append(config)
                if not todo:
                    continue
                try:
                    records = run_vectorized(todo, data_root=self.data_root, progress=self.progress)
                except Exception as err:
                    trace = traceback.format_exc()
                    for config in todo:
                        yield RunOutcome(config, result_path(out_dir, config), True, one_line(err), trace)
                    continue
                for config, record in zip(todo, records):
                    yield RunOutcome(config, write_json_atomic(result_path(out_dir, config), record), True)
