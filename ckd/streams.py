"""Seeded continual-learning task streams as Avalanche benchmarks.

Five streams, each with ten classes:

* ``split-mnist``, ``split-fmnist`` — five experiences of two classes in the
  fixed order of the DER paper (Buzzega et al., 2020): ``{0,1}, {2,3}, {4,5},
  {6,7}, {8,9}``. The order is not shuffled by the seed. Class-incremental;
  with ``task_labels=True`` task-incremental, experience ``i`` carrying task
  label ``i`` and the original labels ``0..9``.
* ``split-digits`` — the same split over scikit-learn's bundled 8x8 digits,
  with a seeded, stratified 70/30 train/test split; needs no data files.
* ``permuted-mnist``, ``rotated-mnist`` — domain-incremental, 20 experiences
  by default, each holding all ten classes and the full train and test sets.
  Every experience (the first included, as in DER) applies its own seeded pixel
  permutation, or its own rotation by an angle drawn uniformly in [0°, 180°).

Pixels are float32 in ``[0, 1]`` with no normalisation. Images stay in memory
as uint8 rows shared by all experiences; an experience is a list of rows plus a
pixel map (identity, permutation or nearest-neighbour rotation) applied when a
sample is read, so twenty permuted or rotated copies of MNIST cost no more
memory than one.

MNIST and Fashion-MNIST are read from the torchvision layout under a data root
(see :func:`resolve_data_root`) and checked against torchvision's MD5 sums;
nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
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

__all__ = [
    "DatasetNotFoundError",
    "Stream",
    "StreamOptions",
    "available_streams",
    "make_stream",
    "resolve_data_root",
]

DATA_ROOT_ENV = "CKD_DATA_ROOT"
N_CLASSES = 10
SCENARIOS = ("class-il", "task-il", "domain-il")
DER_CLASS_ORDER = tuple(range(N_CLASSES))
"""Split streams take classes in this fixed order, two per experience (DER protocol)."""

_IDX_FILES = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte",
    "test-labels": "t10k-labels-idx1-ubyte",
}
_MD5 = {
    "MNIST": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "FashionMNIST": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
_IDX_DTYPE_CODE = 0x08
_SPLIT_SIZES = {"train": 60000, "test": 10000}
_MNIST_SIDE = 28

_decoded: dict[Path, tuple["_Source", "_Source"]] = {}
"""Decoded (train, test) sources by resolved ``<root>/<dataset>/raw`` folder: each file is read once."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing or corrupt under the data root."""


# ----------------------------------------------------------------- data root


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The folder holding ``MNIST/`` and ``FashionMNIST/`` (torchvision layout).

    ``data_root`` if given, else ``$CKD_DATA_ROOT``, else ``ckd/data`` under the
    user cache dir (``$XDG_CACHE_HOME``, default ``~/.cache``). Not created.
    """
    if data_root is not None and str(data_root) != "":
        return Path(data_root).expanduser()
    from_env = os.environ.get(DATA_ROOT_ENV, "")
    if from_env:
        return Path(from_env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "") or Path.home() / ".cache"
    return Path(cache).expanduser() / "ckd" / "data"


def _missing_files_message(root: Path, dataset: str, problem: str) -> str:
    raw = root / dataset / "raw"
    files = "\n".join(f"  {raw / name}  (md5 {md5})" for name, md5 in _MD5[dataset].items())
    return (
        f"{dataset} not usable under data root {root}: {problem}.\n"
        f"Expected these files (torchvision layout, <data root>/{dataset}/raw/):\n{files}\n"
        f"Put the official gzipped IDX files there (torchvision.datasets.{dataset}(root, "
        f"download=True) on a machine with internet writes exactly this layout), or point "
        f"ckd at the folder that contains {dataset}/ with --data-root or "
        f"the {DATA_ROOT_ENV} environment variable."
    )


# ------------------------------------------------------------------ IDX files


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _parse_idx(data: bytes, n_dims: int) -> np.ndarray:
    """uint8 array of an IDX file's bytes: ``(N,)`` labels or ``(N, H, W)`` images."""
    header = 4 + 4 * n_dims
    if len(data) < header or data[0] != 0 or data[1] != 0:
        raise ValueError("not an IDX file (bad magic number)")
    if data[2] != _IDX_DTYPE_CODE or data[3] != n_dims:
        raise ValueError(f"expected unsigned-byte IDX with {n_dims} dims, got code {data[2]} dims {data[3]}")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=n_dims, offset=4))
    if len(data) != header + math.prod(shape):
        raise ValueError(f"IDX size {len(data)} does not match header shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _read_idx(root: Path, dataset: str, stem: str, n_dims: int, n_items: int) -> np.ndarray:
    """Decoded IDX file ``stem`` of ``dataset``: the MD5-verified ``.gz``, else the
    already extracted file (checked for shape only)."""
    raw = root / dataset / "raw"
    gz_path, plain_path = raw / f"{stem}.gz", raw / stem
    path = plain_path if plain_path.is_file() and not gz_path.is_file() else gz_path
    if not path.is_file():
        raise DatasetNotFoundError(_missing_files_message(root, dataset, f"{gz_path} is missing"))
    if path == gz_path:
        expected = _MD5[dataset][gz_path.name]
        got = _md5(gz_path)
        if got != expected:
            problem = f"{gz_path} is corrupt (md5 {got}, expected {expected})"
            raise DatasetNotFoundError(_missing_files_message(root, dataset, problem))
        data = gzip.decompress(gz_path.read_bytes())
    else:
        data = plain_path.read_bytes()
    try:
        array = _parse_idx(data, n_dims)
    except ValueError as err:
        raise DatasetNotFoundError(_missing_files_message(root, dataset, f"{path} is corrupt ({err})")) from err
    if array.shape[0] != n_items:
        problem = f"{path} holds {array.shape[0]} items, expected {n_items}"
        raise DatasetNotFoundError(_missing_files_message(root, dataset, problem))
    return array


# ------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Source:
    """One split of a dataset, decoded once and shared by every experience.

    ``pixels (N, P + 1)`` uint8 with a last column of zeros (the fill pixel a
    rotation maps to), ``labels (N,)`` int64, ``scale``: the value of a white pixel.
    """

    pixels: Tensor
    labels: Tensor
    image_shape: tuple[int, ...]
    scale: float

    @property
    def n_pixels(self) -> int:
        return math.prod(self.image_shape)


def _as_source(images: np.ndarray, labels: np.ndarray, image_shape: tuple[int, ...], scale: float) -> _Source:
    flat = images.reshape(len(images), -1)
    pixels = np.zeros((len(images), flat.shape[1] + 1), dtype=np.uint8)
    pixels[:, :-1] = flat
    return _Source(torch.from_numpy(pixels), torch.from_numpy(labels.astype(np.int64)), image_shape, scale)


def _mnist_sources(root: Path, dataset: str) -> tuple[_Source, _Source]:
    """``(train, test)`` sources of MNIST or FashionMNIST under ``root``, decoded once per folder."""
    key = (root / dataset / "raw").resolve()
    if key not in _decoded:
        shape = (1, _MNIST_SIDE, _MNIST_SIDE)
        splits = []
        for split, n_items in _SPLIT_SIZES.items():
            images = _read_idx(root, dataset, _IDX_FILES[f"{split}-images"], 3, n_items)
            labels = _read_idx(root, dataset, _IDX_FILES[f"{split}-labels"], 1, n_items)
            splits.append(_as_source(images, labels, shape, 255.0))
        _decoded[key] = (splits[0], splits[1])
    return _decoded[key]


def _digits_sources(seed: int) -> tuple[_Source, _Source]:
    """``(train, test)``: a seeded, stratified 70/30 split of scikit-learn's digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images.astype(np.uint8), digits.target.astype(np.int64)
    order = _stratified_order(labels, _rng(seed, "digits-test-split"))
    n_test = round(0.3 * len(labels))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    shape = (1, 8, 8)
    return _as_source(images[train], labels[train], shape, 16.0), _as_source(images[test], labels[test], shape, 16.0)


# ------------------------------------------------------------------- sampling


def _rng(seed: int, purpose: str) -> np.random.Generator:
    """An independent generator per (seed, purpose), so that e.g. the angles do not
    depend on how much data was subsampled before them."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def _stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random order of ``labels``' positions ``(N,)`` whose every prefix is
    class-proportional (within one sample per class)."""
    shuffled = rng.permutation(len(labels))
    _, inverse, counts = np.unique(labels[shuffled], return_inverse=True, return_counts=True)
    by_class = np.argsort(inverse, kind="stable")
    first_of_class = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(labels), dtype=np.int64)
    rank[by_class] = np.arange(len(labels)) - first_of_class[inverse[by_class]]
    quantile = (rank + 0.5) / counts[inverse]
    return shuffled[np.argsort(quantile, kind="stable")]


def _subsample(rows: np.ndarray, labels: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most ``limit`` of ``rows``, class-proportionally, in their original order."""
    if limit is None or len(rows) <= limit:
        return rows
    return np.sort(rows[_stratified_order(labels[rows], rng)[:limit]])


# ---------------------------------------------------------------- pixel maps


def _identity_map(n_pixels: int) -> Tensor:
    return torch.arange(n_pixels)


def _permutation_maps(n: int, n_pixels: int, seed: int) -> list[Tensor]:
    rng = _rng(seed, "permutations")
    return [torch.from_numpy(rng.permutation(n_pixels)) for _ in range(n)]


def _rotation_angles(n: int, seed: int) -> list[float]:
    """``n`` angles in degrees, uniform in [0, 180)."""
    return [float(a) for a in _rng(seed, "rotations").uniform(0.0, 180.0, size=n)]


def _rotation_map(angle: float, height: int, width: int) -> Tensor:
    """``(H*W,)`` source pixel of each output pixel of a rotation by ``angle`` degrees
    (counter-clockwise, about the centre, nearest neighbour as in
    ``torchvision.transforms.functional.rotate``); ``H*W`` (the zero fill pixel)
    where the source falls outside the image.

    Rotating an image of pixel numbers gives the map: nearest-neighbour sampling
    copies values, so gathering through it equals rotating any image.
    """
    from torchvision.transforms.functional import InterpolationMode, rotate

    n_pixels = height * width
    numbers = torch.arange(1, n_pixels + 1, dtype=torch.float32).view(1, 1, height, width)
    rotated = rotate(numbers, angle, interpolation=InterpolationMode.NEAREST)
    return (rotated.reshape(-1).round().long() - 1) % (n_pixels + 1)


# ------------------------------------------------------------------- datasets


class _PixelMapDataset(Dataset):
    """Samples ``rows`` of a source, each seen through ``pixel_map``.

    ``__getitem__`` returns ``(x, y)``: ``x (*image_shape)`` float32 in [0, 1],
    ``y`` an int. ``targets``: the labels, as Avalanche reads them.
    """

    def __init__(self, source: _Source, rows: np.ndarray, pixel_map: Tensor):
        self.source = source
        self.rows = np.ascontiguousarray(rows, dtype=np.int64)
        self.pixel_map = pixel_map
        self.targets: list[int] = source.labels.numpy()[self.rows].tolist()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        pixels = self.source.pixels.select(0, self.rows.item(i)).index_select(0, self.pixel_map)
        x = pixels.to(torch.float32).div_(self.source.scale).view(self.source.image_shape)
        return x, self.targets[i]

    def uint8_pixels(self) -> Tensor:
        """All samples' mapped pixels, ``(N, P)`` uint8."""
        return self.source.pixels.index_select(0, torch.from_numpy(self.rows)).index_select(1, self.pixel_map)


def _avalanche_dataset(dataset: _PixelMapDataset, task: int) -> TaskAwareSupervisedClassificationDataset:
    """``dataset`` with targets and a constant task label: items are ``(x, y, task)``."""
    return TaskAwareSupervisedClassificationDataset(
        [dataset],
        data_attributes=[
            DataAttribute(dataset.targets, "targets"),
            TaskLabels(ConstantSequence(task, len(dataset))),
        ],
    )


# --------------------------------------------------------------------- stream


@dataclass(frozen=True)
class Stream:
    """A built stream: the Avalanche benchmark and what a runner needs to know about it.

    ``benchmark.train_stream[i]`` and ``benchmark.test_stream[i]`` are experience
    ``i``; their datasets yield ``(x (*input_shape) float32, y, task)``.
    ``classes_per_experience[i]``: the sorted classes of experience ``i``.
    """

    name: str
    scenario: str
    benchmark: object
    n_classes: int
    input_shape: tuple[int, ...]
    classes_per_experience: list[list[int]]
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
        values, scale, y, task = self._test_cache[i]
        x = values.to(torch.float32, copy=True).div_(scale).view(-1, *self.input_shape)
        return x, y.clone(), task.clone()

    def _decode_test(self, i: int) -> tuple[Tensor, float, Tensor, Tensor]:
        """``(values, scale, y, task)`` with ``x = values / scale``: uint8 pixels of a
        stream built here, else inputs read through a DataLoader."""
        experience = self.benchmark.test_stream[i]
        if not self._test_data:
            batches = list(DataLoader(experience.dataset.eval(), batch_size=1024, shuffle=False))
            x, y, task = (torch.cat([b[k] for b in batches]) for k in range(3))
            return x, 1.0, y, task
        data = self._test_data[i]
        y = torch.tensor(data.targets, dtype=torch.long)
        return data.uint8_pixels(), data.source.scale, y, torch.full_like(y, experience.task_label)


# ------------------------------------------------------------------- building


@dataclass(frozen=True)
class StreamOptions:
    """How to cut a stream; validated where it enters (see :func:`make_stream`)."""

    seed: int = 0
    n_experiences: int | None = None
    task_labels: bool = False
    validation_fraction: float = 0.0
    max_train_per_experience: int | None = None
    max_test_per_experience: int | None = None

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


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _split_classes(n_experiences: int | None) -> list[list[int]]:
    n = 5 if n_experiences is None else n_experiences
    if N_CLASSES % n != 0:
        raise ValueError(f"n_experiences must divide {N_CLASSES} for a split stream, got {n}")
    per = N_CLASSES // n
    return [list(DER_CLASS_ORDER[k * per : (k + 1) * per]) for k in range(n)]


def _train_eval_pools(train: _Source, test: _Source, options: StreamOptions) -> tuple[np.ndarray, _Source, np.ndarray]:
    """``(train rows, eval source, eval rows)``: the test set, or with a validation
    fraction a stratified slice of the training set (the test set untouched)."""
    all_train = np.arange(len(train.labels))
    if options.validation_fraction == 0.0:
        return all_train, test, np.arange(len(test.labels))
    labels = train.labels.numpy()
    order = _stratified_order(labels, _rng(options.seed, "validation"))
    n_val = max(1, round(options.validation_fraction * len(labels)))
    return np.sort(order[n_val:]), train, np.sort(order[:n_val])


def _build(
    name: str,
    scenario: str,
    train: _Source,
    test: _Source,
    options: StreamOptions,
    plan: list[tuple[list[int], Tensor, int]],
) -> Stream:
    """A :class:`Stream` from ``plan``: per experience ``(classes, pixel map, task)``."""
    train_pool, eval_source, eval_pool = _train_eval_pools(train, test, options)
    train_labels, eval_labels = train.labels.numpy(), eval_source.labels.numpy()
    train_rng, eval_rng = _rng(options.seed, "train-subsample"), _rng(options.seed, "eval-subsample")
    train_sets, eval_sets = [], []
    for classes, pixel_map, task in plan:
        train_rows = train_pool[np.isin(train_labels[train_pool], classes)]
        eval_rows = eval_pool[np.isin(eval_labels[eval_pool], classes)]
        train_rows = _subsample(train_rows, train_labels, options.max_train_per_experience, train_rng)
        eval_rows = _subsample(eval_rows, eval_labels, options.max_test_per_experience, eval_rng)
        train_sets.append(_PixelMapDataset(train, train_rows, pixel_map))
        eval_sets.append(_PixelMapDataset(eval_source, eval_rows, pixel_map))
    classes = [sorted(c) for c, _, _ in plan]
    tasks = [task for _, _, task in plan]
    benchmark = benchmark_from_datasets(
        train=[_avalanche_dataset(d, t) for d, t in zip(train_sets, tasks)],
        test=[_avalanche_dataset(d, t) for d, t in zip(eval_sets, tasks)],
    )
    _annotate(benchmark, classes, tasks)
    return Stream(
        name=name,
        scenario=scenario,
        benchmark=benchmark,
        n_classes=N_CLASSES,
        input_shape=train.image_shape,
        classes_per_experience=classes,
        _test_data=tuple(eval_sets),
    )


def _annotate(benchmark: CLScenario, classes: list[list[int]], tasks: list[int]) -> None:
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


def _split_stream(name: str, load: Callable[[], tuple[_Source, _Source]], options: StreamOptions) -> Stream:
    classes = _split_classes(options.n_experiences)
    tasks = list(range(len(classes))) if options.task_labels else [0] * len(classes)
    scenario = "task-il" if options.task_labels else "class-il"
    train, test = load()
    identity = _identity_map(train.n_pixels)
    return _build(name, scenario, train, test, options, [(c, identity, t) for c, t in zip(classes, tasks)])


def _domain_stream(name: str, root: Path, options: StreamOptions, make_maps: Callable[[int], list[Tensor]]) -> Stream:
    if options.task_labels:
        raise ValueError(f"task_labels=True is only for split streams; {name} is domain-incremental")
    n = 20 if options.n_experiences is None else options.n_experiences
    train, test = _mnist_sources(root, "MNIST")
    all_classes = list(range(N_CLASSES))
    return _build(name, "domain-il", train, test, options, [(all_classes, m, 0) for m in make_maps(n)])


def _split_mnist(root: Path, options: StreamOptions) -> Stream:
    return _split_stream("split-mnist", lambda: _mnist_sources(root, "MNIST"), options)


def _split_fmnist(root: Path, options: StreamOptions) -> Stream:
    return _split_stream("split-fmnist", lambda: _mnist_sources(root, "FashionMNIST"), options)


def _split_digits(root: Path, options: StreamOptions) -> Stream:
    return _split_stream("split-digits", lambda: _digits_sources(options.seed), options)


def _permuted_mnist(root: Path, options: StreamOptions) -> Stream:
    n_pixels = _MNIST_SIDE * _MNIST_SIDE
    return _domain_stream("permuted-mnist", root, options, lambda n: _permutation_maps(n, n_pixels, options.seed))


def _rotated_mnist(root: Path, options: StreamOptions) -> Stream:
    def maps(n: int) -> list[Tensor]:
        return [_rotation_map(a, _MNIST_SIDE, _MNIST_SIDE) for a in _rotation_angles(n, options.seed)]

    return _domain_stream("rotated-mnist", root, options, maps)


_STREAMS: dict[str, Callable[[Path, StreamOptions], Stream]] = {
    "permuted-mnist": _permuted_mnist,
    "rotated-mnist": _rotated_mnist,
    "split-digits": _split_digits,
    "split-fmnist": _split_fmnist,
    "split-mnist": _split_mnist,
}


def available_streams() -> list[str]:
    """Names accepted by :func:`make_stream`, sorted."""
    return sorted(_STREAMS)


def make_stream(
    name: str,
    *,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    n_experiences: int | None = None,
    task_labels: bool = False,
    validation_fraction: float = 0.0,
    max_train_per_experience: int | None = None,
    max_test_per_experience: int | None = None,
) -> Stream:
    """Build stream ``name`` (see :func:`available_streams`).

    ``seed`` fixes permutations, angles, the digits train/test split, the
    validation split and subsampling; the class order of split streams is fixed.
    ``n_experiences``: default 5 for split streams (must divide 10), 20 for
    permuted/rotated. ``task_labels``: task-incremental split streams.
    ``validation_fraction > 0``: each test experience is instead a stratified,
    seeded slice of the training data, removed from training. ``max_*_per_experience``:
    seeded class-proportional subsampling. Raises :class:`DatasetNotFoundError`
    when MNIST files are missing or corrupt under ``data_root``.
    """
    if name not in _STREAMS:
        raise ValueError(f"unknown stream {name!r}; available: {', '.join(available_streams())}")
    options = StreamOptions(
        seed=seed,
        n_experiences=n_experiences,
        task_labels=task_labels,
        validation_fraction=validation_fraction,
        max_train_per_experience=max_train_per_experience,
        max_test_per_experience=max_test_per_experience,
    )
    return _STREAMS[name](resolve_data_root(data_root), options)
