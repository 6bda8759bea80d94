"""The stream type (an Avalanche benchmark with what ckd needs to know of it) and how a stream is built
from pixel sources: class splits, validation pools, experiences."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario
from avalanche.benchmarks.utils import (
    ConstantSequence,
    DataAttribute,
    TaskAwareSupervisedClassificationDataset,
    TaskLabels,
)
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ckd.data.augmentation import (
    CropFlip,
    Normalization,
)
from ckd.data.decoders import PixelSource, mnist_sources
from ckd.data.sampling import identity_map, seeded_rng, stratified_order, subsample_rows

__all__ = ["N_CLASSES", "SCENARIOS", "Stream", "StreamOptions", "annotate", "domain_stream", "split_stream"]


N_CLASSES = 10


SCENARIOS = ("class-il", "task-il", "domain-il")


def _avalanche_dataset(dataset: _PixelMapDataset, task: int) -> TaskAwareSupervisedClassificationDataset:
    """``dataset`` with targets and a constant task label: items are ``(x, y, task)``."""
    return TaskAwareSupervisedClassificationDataset(
        [dataset],
        data_attributes=[
            DataAttribute(dataset.targets, "targets"),
            TaskLabels(ConstantSequence(task, len(dataset))),
        ],
    )


@dataclass(frozen=True)
class Stream:
    """A built stream: the Avalanche benchmark and what a runner needs to know about it.

    ``benchmark.train_stream[i]`` and ``benchmark.test_stream[i]`` are experience
    ``i``; their datasets yield ``(x (*input_shape) float32, y, task)``.
    ``classes_per_experience[i]``: the sorted classes of experience ``i``.
    ``normalization``: what the inputs were normalised with (``None``: pixels in [0, 1]).
    ``augmentation``: the training augmentation of the stream's protocol, for the
    runner to apply on the device (``None``: none).
    ``data_files``: the file or folder the images were decoded from (``""``: built in
    memory), so results tell two copies of one dataset apart.
    """

    name: str
    scenario: str
    benchmark: object
    n_classes: int
    input_shape: tuple[int, ...]
    classes_per_experience: list[list[int]]
    normalization: Normalization | None = None
    augmentation: CropFlip | None = None
    data_files: str = ""
    _test_data: tuple[_PixelMapDataset, ...] = field(default=(), repr=False, compare=False)
    _test_cache: dict[int, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {self.scenario!r}")
        n_train, n_test = len(self.benchmark.train_stream), len(self.benchmark.test_stream)
        if not n_train == n_test == len(self.classes_per_experience):
            raise ValueError(
                f"train_stream ({n_train}), test_stream ({n_test}) and classes_per_experience "
                f"({len(self.classes_per_experience)}) must have the same length"
            )

    @property
    def n_experiences(self) -> int:
        return len(self.classes_per_experience)

    def test_tensors(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        """Test experience ``i`` as ``(x (N, *input_shape) float32, y (N,) int64, task (N,) int64)``,
        in the dataset's order. Decoded once; every call returns fresh tensors."""
        if not 0 <= i < self.n_experiences:
            raise IndexError(f"test experience {i} out of range [0, {self.n_experiences})")
        if i not in self._test_cache:
            self._test_cache[i] = self._decode_test(i)
        values, source, y, task = self._test_cache[i]
        x = values.clone() if source is None else source.to_float(values)
        return x.view(-1, *self.input_shape), y.clone(), task.clone()

    def _decode_test(self, i: int) -> tuple[Tensor, PixelSource | None, Tensor, Tensor]:
        """``(values, source, y, task)``: uint8 pixels of a stream built here and the
        source that turns them into inputs, else inputs read through a DataLoader."""
        experience = self.benchmark.test_stream[i]
        if not self._test_data:
            batches = list(DataLoader(experience.dataset.eval(), batch_size=1024, shuffle=False))
            x, y, task = (torch.cat([b[k] for b in batches]) for k in range(3))
            return x.to(torch.float32), None, y.long(), task.long()
        data = self._test_data[i]
        y = torch.tensor(data.targets, dtype=torch.long)
        return data.uint8_pixels(), data.source, y, torch.full_like(y, experience.task_label)


@dataclass(frozen=True)
class StreamOptions:
    """How to cut a stream (and whether to MD5-check its files); validated where it
    enters (see :func:`make_stream`)."""

    seed: int = 0
    n_experiences: int | None = None
    task_labels: bool = False
    validation_fraction: float = 0.0
    max_train_per_experience: int | None = None
    max_test_per_experience: int | None = None
    checksum: bool = True

    def __post_init__(self) -> None:
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if self.n_experiences is not None and (not _is_int(self.n_experiences) or self.n_experiences < 1):
            raise ValueError(f"n_experiences must be an int >= 1 or None, got {self.n_experiences!r}")
        if not isinstance(self.validation_fraction, (int, float)) or not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}")
        for name in ("max_train_per_experience", "max_test_per_experience"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
        if not isinstance(self.checksum, bool):
            raise ValueError(f"checksum must be true or false, got {self.checksum!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _split_classes(n_experiences: int | None, n_classes: int = N_CLASSES, default: int = 5) -> list[list[int]]:
    """Classes ``0 .. n_classes-1`` in order, cut into ``n_experiences`` equal groups."""
    n = default if n_experiences is None else n_experiences
    if n_classes % n != 0:
        raise ValueError(f"n_experiences must divide {n_classes} for a split stream, got {n}")
    per = n_classes // n
    return [list(range(k * per, (k + 1) * per)) for k in range(n)]


def _train_eval_pools(train: PixelSource, test: PixelSource, options: StreamOptions) -> tuple[np.ndarray, PixelSource, np.ndarray]:
    """``(train rows, eval source, eval rows)``: the test set, or with a validation
    fraction a stratified slice of the training set (the test set untouched)."""
    all_train = np.arange(len(train.labels))
    if options.validation_fraction == 0.0:
        return all_train, test, np.arange(len(test.labels))
    labels = train.labels.numpy()
    order = stratified_order(labels, seeded_rng(options.seed, "validation"))
    n_val = max(1, round(options.validation_fraction * len(labels)))
    return np.sort(order[n_val:]), train, np.sort(order[:n_val])


def _build(
    name: str,
    scenario: str,
    train: PixelSource,
    test: PixelSource,
    options: StreamOptions,
    plan: list[tuple[list[int], Tensor, int]],
    n_classes: int = N_CLASSES,
    augmentation: CropFlip | None = None,
) -> Stream:
    """A :class:`Stream` from ``plan``: per experience ``(classes, pixel map, task)``."""
    train_pool, eval_source, eval_pool = _train_eval_pools(train, test, options)
    train_labels, eval_labels = train.labels.numpy(), eval_source.labels.numpy()
    train_rng, eval_rng = seeded_rng(options.seed, "train-subsample"), seeded_rng(options.seed, "eval-subsample")
    train_sets, eval_sets = [], []
    for classes, pixel_map, _task in plan:
        train_rows = train_pool[np.isin(train_labels[train_pool], classes)]
        eval_rows = eval_pool[np.isin(eval_labels[eval_pool], classes)]
        train_rows = subsample_rows(train_rows, train_labels, options.max_train_per_experience, train_rng)
        eval_rows = subsample_rows(eval_rows, eval_labels, options.max_test_per_experience, eval_rng)
        train_sets.append(_PixelMapDataset(train, train_rows, pixel_map))
        eval_sets.append(_PixelMapDataset(eval_source, eval_rows, pixel_map))
    classes = [sorted(c) for c, _, _ in plan]
    tasks = [task for _, _, task in plan]
    benchmark = benchmark_from_datasets(
        train=[_avalanche_dataset(d, t) for d, t in zip(train_sets, tasks)],
        test=[_avalanche_dataset(d, t) for d, t in zip(eval_sets, tasks)],
    )
    annotate(benchmark, classes, tasks)
    return Stream(
        name=name,
        scenario=scenario,
        benchmark=benchmark,
        n_classes=n_classes,
        input_shape=train.image_shape,
        classes_per_experience=classes,
        normalization=train.normalization,
        augmentation=augmentation,
        data_files=train.origin,
        _test_data=tuple(eval_sets),
    )


def annotate(benchmark: CLScenario, classes: list[list[int]], tasks: list[int]) -> None:
    """Set Avalanche's ``ClassesTimeline`` and ``TaskAware`` attributes on every
    experience, as sorted lists. Avalanche's own decorators would find the classes
    by iterating every target in Python (seconds for permuted-mnist); here they are known."""
    every_class = set().union(*classes)
    for stream in (benchmark.train_stream, benchmark.test_stream):
        seen: set[int] = set()
        for experience, current, task in zip(stream, classes, tasks):
            experience.classes_in_this_experience = list(current)
            experience.previous_classes = sorted(seen)
            seen |= set(current)
            experience.classes_seen_so_far = sorted(seen)
            experience.future_classes = sorted(every_class - seen)
            experience.task_label = task
            experience.task_labels = [task]


def split_stream(
    name: str,
    load: Callable[[], tuple[PixelSource, PixelSource]],
    options: StreamOptions,
    n_classes: int = N_CLASSES,
    default_experiences: int = 5,
    augmentation: CropFlip | None = None,
) -> Stream:
    classes = _split_classes(options.n_experiences, n_classes, default_experiences)
    tasks = list(range(len(classes))) if options.task_labels else [0] * len(classes)
    scenario = "task-il" if options.task_labels else "class-il"
    train, test = load()
    identity = identity_map(train.n_pixels)
    plan = [(c, identity, t) for c, t in zip(classes, tasks)]
    return _build(name, scenario, train, test, options, plan, n_classes, augmentation)


def domain_stream(name: str, root: Path, options: StreamOptions, make_maps: Callable[[int], list[Tensor]]) -> Stream:
    if options.task_labels:
        raise ValueError(f"task_labels=True is only for split streams; {name} is domain-incremental")
    n = 20 if options.n_experiences is None else options.n_experiences
    train, test = mnist_sources(root, "MNIST", options.checksum)
    all_classes = list(range(N_CLASSES))
    return _build(name, "domain-il", train, test, options, [(all_classes, m, 0) for m in make_maps(n)])


class _PixelMapDataset(Dataset):
    """Samples ``rows`` of a source, each seen through ``pixel_map``.

    ``__getitem__`` returns ``(x, y)``: ``x (*image_shape)`` float32 in [0, 1]
    (normalised when the source has a normalisation), ``y`` an int.
    ``targets``: the labels, as Avalanche reads them.
    """

    def __init__(self, source: PixelSource, rows: np.ndarray, pixel_map: Tensor):
        self.source = source
        self.rows = np.ascontiguousarray(rows, dtype=np.int64)
        self.pixel_map = pixel_map
        self.targets: list[int] = source.labels.numpy()[self.rows].tolist()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        pixels = self.source.pixels.select(0, self.rows.item(i)).index_select(0, self.pixel_map)
        return self.source.to_float(pixels), self.targets[i]

    def as_tensors(self) -> tuple[Tensor, Tensor]:
        """All samples at once: ``x (N, *image_shape)`` float32, the values ``__getitem__``
        returns, and ``y (N,)`` int64 (fresh tensors)."""
        return self.source.to_float(self.uint8_pixels()), torch.as_tensor(self.targets, dtype=torch.long)

    def uint8_pixels(self) -> Tensor:
        """All samples' mapped pixels, ``(N, P)`` uint8."""
        rows = self.source.pixels.index_select(0, torch.from_numpy(self.rows))
        n_pixels = self.pixel_map.shape[0]
        if torch.equal(self.pixel_map, torch.arange(n_pixels)):  # split streams: no remapping
            return rows[:, :n_pixels].contiguous()
        # A gather along the rows is twice as fast as index_select over columns (60000 x 784: 0.26 s vs 0.57 s).
        return torch.gather(rows, 1, self.pixel_map.expand(rows.shape[0], n_pixels))
