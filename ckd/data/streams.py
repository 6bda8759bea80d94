"""Seeded continual-learning task streams as Avalanche benchmarks.

Five MNIST-family streams, each with ten classes:

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

Three image streams of the DER protocol, class-incremental in the class order of
the DER authors' code, each class split into experiences in order:

* ``split-cifar10`` — 5 experiences of 2 classes (CIFAR-10 labels 0..9 in order);
* ``split-cifar100`` — 10 experiences of 10 classes by default (labels 0..99);
* ``split-tinyimagenet`` — 10 experiences of 20 classes; class ``k`` is line ``k``
  of ``wnids.txt``; the test set is the official validation set (50 per class).

Their pixels are normalised per channel with the dataset's mean and std (the
DER constants in :mod:`ckd.data.augmentation`), and :attr:`Stream.augmentation` carries the
training augmentation the protocol applies (random crop with 4 pixels of
padding, horizontal flip); the runner applies it on the device. CIFAR is read
from torchvision's unpacked layout (``cifar-10-batches-py/``, ``cifar-100-python/``)
and MD5-checked file by file; CIFAR-10, when that folder is absent, from the JPEG
copy ``CIFAR10-JPEG/cifar10-jpeg.tar.gz`` (quality 75: close to the original pixels,
not equal to them), checked by its MD5 and its 5,000/1,000 images per class and
decoded through a disk cache (:mod:`ckd.data.image_files`); Tiny ImageNet from the unpacked
``tiny-imagenet-200/`` folder, checked by its file counts and, when
``tiny-imagenet-200.zip`` lies beside it, the MD5 of the archive.
``checksum=False`` skips these checks (re-packed copies, synthetic test archives).

``make_stream("image-folder:PATH")`` reads a user's images with no code: ``PATH``
(a folder or a tar archive of one) holds ``train/<class>/<image>`` and
``test/<class>/<image>``, classes sorted by name, two per experience by default; see
:mod:`ckd.data.image_files`. ``make_stream("package.module:function")`` builds a user's
stream: a function that returns an Avalanche benchmark (or a :class:`Stream`), see
:func:`stream_from_benchmark`.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
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

from ckd.common.files import md5sum as _md5
from ckd.data.augmentation import (
    CIFAR10_NORMALIZATION,
    CIFAR100_NORMALIZATION,
    TINYIMAGENET_NORMALIZATION,
    CropFlip,
    Normalization,
)
from ckd.data.image_files import ImageSet, load_image_set

__all__ = [
    "DatasetNotFoundError",
    "Stream",
    "StreamOptions",
    "available_streams",
    "is_image_folder",
    "make_stream",
    "resolve_data_root",
    "stream_from_benchmark",
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
_CIFAR10_JPEG = "CIFAR10-JPEG/cifar10-jpeg.tar.gz"
_CIFAR10_JPEG_MD5 = "82072a447fb69db2d9437e04b70ccaa1"
_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
"""The class folders of the JPEG copy, in the order of CIFAR-10's labels 0..9."""
IMAGE_FOLDER = "image-folder:"

_decoded: dict[tuple[Path, bool], tuple["_Source", "_Source"]] = {}
"""Decoded (train, test) sources by (resolved dataset folder, checksum verified): each file is read once."""


@dataclass(frozen=True)
class _Layout:
    """Where a dataset's files live under the data root, their MD5 sums, how to get them."""

    name: str
    folder: str
    md5: dict[str, str]
    how_to_get: str


def _torchvision_hint(files: str, cls: str, folder: str) -> str:
    return (
        f"Put the official {files} there (torchvision.datasets.{cls}(root, download=True) on a "
        f"machine with internet writes exactly this layout), or point ckd at the folder that "
        f"contains {folder} with --data-root or the {DATA_ROOT_ENV} environment variable."
    )


_LAYOUTS = {
    dataset: _Layout(dataset, f"{dataset}/raw", md5, _torchvision_hint("gzipped IDX files", dataset, f"{dataset}/"))
    for dataset, md5 in _MD5.items()
}
_LAYOUTS["CIFAR10"] = _Layout(
    "CIFAR-10",
    "cifar-10-batches-py",
    {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    _torchvision_hint("python-version batches (cifar-10-python.tar.gz, unpacked)", "CIFAR10", "cifar-10-batches-py/")
    + f" Or put the JPEG copy of CIFAR-10 at <data root>/{_CIFAR10_JPEG} (md5 {_CIFAR10_JPEG_MD5}).",
)
_LAYOUTS["CIFAR100"] = _Layout(
    "CIFAR-100",
    "cifar-100-python",
    {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
    _torchvision_hint("python-version files (cifar-100-python.tar.gz, unpacked)", "CIFAR100", "cifar-100-python/"),
)
_LAYOUTS["TinyImageNet"] = _Layout(
    "Tiny ImageNet",
    "tiny-imagenet-200",
    {"wnids.txt": "", "train/<wnid>/images/*.JPEG": "", "val/images/*.JPEG": "", "val/val_annotations.txt": ""},
    "Unzip the official tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) in the data "
    f"root, or point ckd at the folder that contains tiny-imagenet-200/ with --data-root or the {DATA_ROOT_ENV} "
    "environment variable.",
)
_TINYIMAGENET_ZIP_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


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
    layout = _LAYOUTS[dataset]
    folder = root / layout.folder
    files = "\n".join(f"  {folder / name}" + (f"  (md5 {md5})" if md5 else "") for name, md5 in layout.md5.items())
    return (
        f"{layout.name} not usable under data root {root}: {problem}.\n"
        f"Expected these files (<data root>/{layout.folder}/):\n{files}\n{layout.how_to_get}"
    )


def _checked_file(root: Path, dataset: str, name: str, checksum: bool) -> Path:
    """``<root>/<layout folder>/<name>``, present and (with ``checksum``) with its MD5."""
    path = root / _LAYOUTS[dataset].folder / name
    if not path.is_file():
        raise DatasetNotFoundError(_missing_files_message(root, dataset, f"{path} is missing"))
    expected = _LAYOUTS[dataset].md5[name]
    if checksum and expected:
        got = _md5(path)
        if got != expected:
            problem = f"{path} is corrupt (md5 {got}, expected {expected}; --no-checksum accepts re-packed copies)"
            raise DatasetNotFoundError(_missing_files_message(root, dataset, problem))
    return path


# ------------------------------------------------------------------ IDX files


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


def _read_idx(root: Path, dataset: str, stem: str, n_dims: int, n_items: int, checksum: bool = True) -> np.ndarray:
    """Decoded IDX file ``stem`` of ``dataset``: the MD5-verified ``.gz`` (unverified
    with ``checksum=False``), else the already extracted file (checked for shape only)."""
    raw = root / dataset / "raw"
    gz_path, plain_path = raw / f"{stem}.gz", raw / stem
    path = plain_path if plain_path.is_file() and not gz_path.is_file() else gz_path
    if path == gz_path:
        _checked_file(root, dataset, gz_path.name, checksum)
        data = gzip.decompress(gz_path.read_bytes())
    else:
        data = plain_path.read_bytes()
    try:
        array = _parse_idx(data, n_dims)
    except ValueError as err:
        raise DatasetNotFoundError(_missing_files_message(root, dataset, f"{path} is corrupt ({err})")) from err
    if n_items and array.shape[0] != n_items:
        problem = f"{path} holds {array.shape[0]} items, expected {n_items}"
        raise DatasetNotFoundError(_missing_files_message(root, dataset, problem))
    return array


# ------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Source:
    """One split of a dataset, decoded once and shared by every experience.

    ``pixels (N, P + 1)`` uint8 with a last column of zeros (the fill pixel a
    rotation maps to), ``labels (N,)`` int64, ``scale``: the value of a white pixel,
    ``normalization``: applied after dividing by ``scale`` (``None``: none).
    """

    pixels: Tensor
    labels: Tensor
    image_shape: tuple[int, ...]
    scale: float
    normalization: Normalization | None = None

    @property
    def n_pixels(self) -> int:
        return math.prod(self.image_shape)

    def to_float(self, pixels: Tensor) -> Tensor:
        """uint8 ``(..., P)`` → float32 ``(..., *image_shape)``, scaled to [0, 1] and normalised."""
        x = pixels.to(torch.float32).div_(self.scale).view(*pixels.shape[:-1], *self.image_shape)
        return x if self.normalization is None else self.normalization(x)


def _as_source(
    images: np.ndarray,
    labels: np.ndarray,
    image_shape: tuple[int, ...],
    scale: float,
    normalization: Normalization | None = None,
) -> _Source:
    flat = images.reshape(len(images), -1)
    pixels = np.zeros((len(images), flat.shape[1] + 1), dtype=np.uint8)
    pixels[:, :-1] = flat
    labels = torch.from_numpy(labels.astype(np.int64))
    return _Source(torch.from_numpy(pixels), labels, image_shape, scale, normalization)


def _cached(folder: Path, checksum: bool, decode: Callable[[], tuple[_Source, _Source]]) -> tuple[_Source, _Source]:
    """``decode()`` once per dataset folder; a checked decode also serves unchecked requests."""
    key = folder.resolve()
    if (key, True) in _decoded:
        return _decoded[(key, True)]
    if (key, checksum) not in _decoded:
        _decoded[(key, checksum)] = decode()
    return _decoded[(key, checksum)]


def _mnist_sources(root: Path, dataset: str, checksum: bool = True) -> tuple[_Source, _Source]:
    """``(train, test)`` sources of MNIST or FashionMNIST under ``root``, decoded once per folder."""

    def decode() -> tuple[_Source, _Source]:
        shape = (1, _MNIST_SIDE, _MNIST_SIDE)
        splits = []
        for split, n_items in _SPLIT_SIZES.items():
            n_items = n_items if checksum else 0
            images = _read_idx(root, dataset, _IDX_FILES[f"{split}-images"], 3, n_items, checksum)
            labels = _read_idx(root, dataset, _IDX_FILES[f"{split}-labels"], 1, n_items, checksum)
            if len(images) != len(labels):
                problem = f"the {split} files hold {len(images)} images but {len(labels)} labels"
                raise DatasetNotFoundError(_missing_files_message(root, dataset, problem))
            splits.append(_as_source(images, labels, shape, 255.0))
        return splits[0], splits[1]

    return _cached(root / dataset / "raw", checksum, decode)


def _unpickle(root: Path, dataset: str, name: str, checksum: bool) -> dict[str, object]:
    """A CIFAR python-version file: a pickled dict, keys as ``str`` whether the
    pickle wrote them as Python 2 strings or as bytes."""
    path = _checked_file(root, dataset, name, checksum)
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as err:  # any unpickling failure means the file is not what it should be
        raise DatasetNotFoundError(_missing_files_message(root, dataset, f"{path} is corrupt ({err})")) from err
    if not isinstance(entry, dict):
        problem = f"{path} is corrupt (holds a {type(entry).__name__}, not a dict)"
        raise DatasetNotFoundError(_missing_files_message(root, dataset, problem))
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _cifar_split(
    root: Path, dataset: str, files: tuple[str, ...], label_key: str, n_classes: int, checksum: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 3·32·32) uint8 in CHW order, labels (N,))`` of the batches ``files``."""
    images, labels = [], []
    for name in files:
        entry = _unpickle(root, dataset, name, checksum)
        path = root / _LAYOUTS[dataset].folder / name
        if "data" not in entry or label_key not in entry:
            problem = f"{path} is corrupt (no 'data' or {label_key!r} entry)"
            raise DatasetNotFoundError(_missing_files_message(root, dataset, problem))
        data = np.asarray(entry["data"], dtype=np.uint8)
        label = np.asarray(entry[label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or label.shape != (data.shape[0],):
            problem = f"{path} holds data {data.shape} and labels {label.shape}, expected (N, 3072) and (N,)"
            raise DatasetNotFoundError(_missing_files_message(root, dataset, problem))
        if label.size and not (0 <= label.min() and label.max() < n_classes):
            problem = f"{path} has labels outside [0, {n_classes})"
            raise DatasetNotFoundError(_missing_files_message(root, dataset, problem))
        images.append(data)
        labels.append(label)
    return np.concatenate(images), np.concatenate(labels)


def _cifar_sources(root: Path, dataset: str, checksum: bool) -> tuple[_Source, _Source]:
    """``(train, test)`` of CIFAR-10 or CIFAR-100 (fine labels) under ``root``, decoded once per folder."""
    if dataset == "CIFAR10":
        train_files, test_files = tuple(f"data_batch_{k}" for k in range(1, 6)), ("test_batch",)
        meta, names_key, label_key, n_classes, normalization = (
            "batches.meta", "label_names", "labels", 10, CIFAR10_NORMALIZATION
        )
    else:
        train_files, test_files = ("train",), ("test",)
        meta, names_key, label_key, n_classes, normalization = (
            "meta", "fine_label_names", "fine_labels", 100, CIFAR100_NORMALIZATION
        )

    def decode() -> tuple[_Source, _Source]:
        names = _unpickle(root, dataset, meta, checksum).get(names_key)
        if names is None or len(names) != n_classes:
            problem = f"{root / _LAYOUTS[dataset].folder / meta} does not list {n_classes} {names_key}"
            raise DatasetNotFoundError(_missing_files_message(root, dataset, problem))
        shape = (3, 32, 32)
        return tuple(
            _as_source(*_cifar_split(root, dataset, files, label_key, n_classes, checksum), shape, 255.0, normalization)
            for files in (train_files, test_files)
        )

    return _cached(root / _LAYOUTS[dataset].folder, checksum, decode)


def _cifar10_sources(root: Path, checksum: bool) -> tuple[_Source, _Source]:
    """CIFAR-10 from torchvision's ``cifar-10-batches-py/``, else from the JPEG copy
    ``CIFAR10-JPEG/cifar10-jpeg.tar.gz``; decoded once per folder or archive."""
    folder, archive = root / _LAYOUTS["CIFAR10"].folder, root / _CIFAR10_JPEG
    if folder.is_dir() or not archive.is_file():
        if not folder.is_dir():
            problem = f"neither {folder} nor the JPEG copy {archive} exists"
            raise DatasetNotFoundError(_missing_files_message(root, "CIFAR10", problem))
        return _cifar_sources(root, "CIFAR10", checksum)

    def decode() -> tuple[_Source, _Source]:
        try:
            image_set = load_image_set(
                archive,
                classes=_CIFAR10_CLASSES,
                image_size=(32, 32),
                per_class=(5000, 1000) if checksum else None,
                md5=_CIFAR10_JPEG_MD5 if checksum else None,
            )
        except ValueError as err:
            fix = "--no-checksum accepts a re-packed copy" if checksum else f"the shared copy has md5 {_CIFAR10_JPEG_MD5}"
            raise DatasetNotFoundError(f"CIFAR-10 not usable: {err}; copy {archive.name} again ({fix})") from err
        return _image_sources(image_set, CIFAR10_NORMALIZATION)

    return _cached(archive, checksum, decode)


def _image_sources(image_set: ImageSet, normalization: Normalization) -> tuple[_Source, _Source]:
    shape = image_set.image_shape
    return (
        _as_source(image_set.train_images, image_set.train_labels, shape, 255.0, normalization),
        _as_source(image_set.test_images, image_set.test_labels, shape, 255.0, normalization),
    )


_TINY_SIDE = 64
_TINY_COUNTS = (200, 500, 50)
"""Classes, training and validation images per class of the official release."""


def _read_jpegs(paths: list[Path], into: np.ndarray) -> None:
    """Decode ``paths`` as 64×64 RGB (grayscale images converted) into rows of ``into (N, ≥P)``."""
    from PIL import Image

    n_pixels = 3 * _TINY_SIDE * _TINY_SIDE
    for row, path in enumerate(paths):
        with Image.open(path) as image:
            if image.size != (_TINY_SIDE, _TINY_SIDE):
                raise ValueError(f"{path} is {image.size[0]}x{image.size[1]}, expected 64x64")
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        into[row, :n_pixels] = pixels.transpose(2, 0, 1).reshape(-1)


def _tinyimagenet_sources(root: Path, checksum: bool) -> tuple[_Source, _Source]:
    """``(train, test = official val)`` of Tiny ImageNet under ``root``; class ``k`` is
    line ``k`` of ``wnids.txt``. Decoded once per folder (about 110,000 JPEGs)."""
    dataset, folder = "TinyImageNet", root / _LAYOUTS["TinyImageNet"].folder

    def fail(problem: str) -> DatasetNotFoundError:
        return DatasetNotFoundError(_missing_files_message(root, dataset, problem))

    def decode() -> tuple[_Source, _Source]:
        wnids = [w.strip() for w in _checked_file(root, dataset, "wnids.txt", checksum).read_text().split() if w.strip()]
        index = {wnid: k for k, wnid in enumerate(wnids)}
        if len(index) != len(wnids) or not wnids:
            raise fail(f"{folder / 'wnids.txt'} must list distinct class ids, one per line")
        train_paths, train_labels = [], []
        for k, wnid in enumerate(wnids):
            images = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
            if not images:
                raise fail(f"{folder / 'train' / wnid / 'images'} holds no .JPEG images")
            train_paths += images
            train_labels += [k] * len(images)
        annotations = _checked_file(root, dataset, "val/val_annotations.txt", checksum).read_text().splitlines()
        val_paths, val_labels = [], []
        for line in annotations:
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise fail(f"{folder / 'val' / 'val_annotations.txt'} has a line that names no class of wnids.txt: {line!r}")
            val_paths.append(folder / "val" / "images" / fields[0])
            val_labels.append(index[fields[1]])
        if checksum:
            _check_tinyimagenet_counts(root, wnids, train_labels, val_labels, fail)
        shape = (3, _TINY_SIDE, _TINY_SIDE)
        sources = []
        for paths, labels in ((train_paths, train_labels), (val_paths, val_labels)):
            pixels = np.zeros((len(paths), math.prod(shape) + 1), dtype=np.uint8)
            try:
                _read_jpegs(paths, pixels)
            except (OSError, ValueError) as err:  # missing, truncated or wrongly sized image
                raise fail(str(err)) from err
            labels = torch.tensor(labels, dtype=torch.int64)
            sources.append(_Source(torch.from_numpy(pixels), labels, shape, 255.0, TINYIMAGENET_NORMALIZATION))
        return sources[0], sources[1]

    return _cached(folder, checksum, decode)


def _check_tinyimagenet_counts(
    root: Path, wnids: list[str], train_labels: list[int], val_labels: list[int], fail: Callable[[str], Exception]
) -> None:
    """The official release: 200 classes, 500 training and 50 validation images each;
    and the MD5 of ``tiny-imagenet-200.zip`` when it lies in the data root."""
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=len(wnids))
    val_counts = np.bincount(np.asarray(val_labels, dtype=np.int64), minlength=len(wnids))
    n_classes, n_train, n_val = _TINY_COUNTS
    if len(wnids) != n_classes or (counts != n_train).any() or (val_counts != n_val).any():
        raise fail(
            f"found {len(wnids)} classes, {len(train_labels)} training and {len(val_labels)} validation images; "
            f"the official release has {n_classes} classes of {n_train} training and {n_val} validation "
            "images (--no-checksum accepts other copies)"
        )
    archive = root / "tiny-imagenet-200.zip"
    if archive.is_file() and (got := _md5(archive)) != _TINYIMAGENET_ZIP_MD5:
        raise fail(f"{archive} is corrupt (md5 {got}, expected {_TINYIMAGENET_ZIP_MD5})")


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

    ``__getitem__`` returns ``(x, y)``: ``x (*image_shape)`` float32 in [0, 1]
    (normalised when the source has a normalisation), ``y`` an int.
    ``targets``: the labels, as Avalanche reads them.
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
    ``normalization``: what the inputs were normalised with (``None``: pixels in [0, 1]).
    ``augmentation``: the training augmentation of the stream's protocol, for the
    runner to apply on the device (``None``: none).
    """

    name: str
    scenario: str
    benchmark: object
    n_classes: int
    input_shape: tuple[int, ...]
    classes_per_experience: list[list[int]]
    normalization: Normalization | None = None
    augmentation: CropFlip | None = None
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

    def _decode_test(self, i: int) -> tuple[Tensor, _Source | None, Tensor, Tensor]:
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


# ------------------------------------------------------------------- building


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
    n_classes: int = N_CLASSES,
    augmentation: CropFlip | None = None,
) -> Stream:
    """A :class:`Stream` from ``plan``: per experience ``(classes, pixel map, task)``."""
    train_pool, eval_source, eval_pool = _train_eval_pools(train, test, options)
    train_labels, eval_labels = train.labels.numpy(), eval_source.labels.numpy()
    train_rng, eval_rng = _rng(options.seed, "train-subsample"), _rng(options.seed, "eval-subsample")
    train_sets, eval_sets = [], []
    for classes, pixel_map, _task in plan:
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
        n_classes=n_classes,
        input_shape=train.image_shape,
        classes_per_experience=classes,
        normalization=train.normalization,
        augmentation=augmentation,
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


def _split_stream(
    name: str,
    load: Callable[[], tuple[_Source, _Source]],
    options: StreamOptions,
    n_classes: int = N_CLASSES,
    default_experiences: int = 5,
    augmentation: CropFlip | None = None,
) -> Stream:
    classes = _split_classes(options.n_experiences, n_classes, default_experiences)
    tasks = list(range(len(classes))) if options.task_labels else [0] * len(classes)
    scenario = "task-il" if options.task_labels else "class-il"
    train, test = load()
    identity = _identity_map(train.n_pixels)
    plan = [(c, identity, t) for c, t in zip(classes, tasks)]
    return _build(name, scenario, train, test, options, plan, n_classes, augmentation)


def _domain_stream(name: str, root: Path, options: StreamOptions, make_maps: Callable[[int], list[Tensor]]) -> Stream:
    if options.task_labels:
        raise ValueError(f"task_labels=True is only for split streams; {name} is domain-incremental")
    n = 20 if options.n_experiences is None else options.n_experiences
    train, test = _mnist_sources(root, "MNIST", options.checksum)
    all_classes = list(range(N_CLASSES))
    return _build(name, "domain-il", train, test, options, [(all_classes, m, 0) for m in make_maps(n)])


def _split_mnist(root: Path, options: StreamOptions) -> Stream:
    return _split_stream("split-mnist", lambda: _mnist_sources(root, "MNIST", options.checksum), options)


def _split_fmnist(root: Path, options: StreamOptions) -> Stream:
    return _split_stream("split-fmnist", lambda: _mnist_sources(root, "FashionMNIST", options.checksum), options)


def _der_augmentation(normalization: Normalization) -> CropFlip:
    """``RandomCrop(size, padding=4)`` then ``RandomHorizontalFlip()``, padding with black."""
    return CropFlip(padding=4, flip_probability=0.5, fill=normalization.black)


def _split_cifar10(root: Path, options: StreamOptions) -> Stream:
    load = lambda: _cifar10_sources(root, options.checksum)  # noqa: E731
    return _split_stream("split-cifar10", load, options, 10, 5, _der_augmentation(CIFAR10_NORMALIZATION))


def _split_cifar100(root: Path, options: StreamOptions) -> Stream:
    load = lambda: _cifar_sources(root, "CIFAR100", options.checksum)  # noqa: E731
    return _split_stream("split-cifar100", load, options, 100, 10, _der_augmentation(CIFAR100_NORMALIZATION))


def _split_tinyimagenet(root: Path, options: StreamOptions) -> Stream:
    def load() -> tuple[_Source, _Source]:
        train, test = _tinyimagenet_sources(root, options.checksum)
        if (n := int(train.labels.max()) + 1) != 200:
            problem = f"split-tinyimagenet needs the 200 classes of Tiny ImageNet, wnids.txt lists {n}"
            raise DatasetNotFoundError(_missing_files_message(root, "TinyImageNet", problem))
        return train, test

    augmentation = _der_augmentation(TINYIMAGENET_NORMALIZATION)
    return _split_stream("split-tinyimagenet", load, options, 200, 10, augmentation)


def _split_digits(root: Path, options: StreamOptions) -> Stream:
    return _split_stream("split-digits", lambda: _digits_sources(options.seed), options)


def _permuted_mnist(root: Path, options: StreamOptions) -> Stream:
    n_pixels = _MNIST_SIDE * _MNIST_SIDE
    return _domain_stream("permuted-mnist", root, options, lambda n: _permutation_maps(n, n_pixels, options.seed))


def _rotated_mnist(root: Path, options: StreamOptions) -> Stream:
    def maps(n: int) -> list[Tensor]:
        return [_rotation_map(a, _MNIST_SIDE, _MNIST_SIDE) for a in _rotation_angles(n, options.seed)]

    return _domain_stream("rotated-mnist", root, options, maps)


def is_image_folder(name: str) -> bool:
    """Whether stream ``name`` is ``image-folder:PATH``."""
    return name.startswith(IMAGE_FOLDER) and len(name) > len(IMAGE_FOLDER)


def _image_folder(name: str, options: StreamOptions) -> Stream:
    """``image-folder:PATH``: the images of folder (or tar archive) ``PATH``, class-incremental,
    normalised with their training set's channel means and stds, not augmented."""
    path = Path(name[len(IMAGE_FOLDER):]).expanduser()

    def decode() -> tuple[_Source, _Source]:
        try:
            image_set = load_image_set(path)
        except FileNotFoundError as err:
            raise DatasetNotFoundError(f"{err}; {IMAGE_FOLDER}PATH reads PATH/train/<class>/<image> and PATH/test/<class>/<image>") from err
        except ValueError as err:
            raise DatasetNotFoundError(str(err)) from err
        mean, std = image_set.channel_stats()
        return _image_sources(image_set, Normalization(mean, std))

    train, test = _cached(path, True, decode)
    n_classes = int(train.labels.max()) + 1
    if options.n_experiences is None and n_classes % 2:
        raise ValueError(f"{name} has {n_classes} classes, not 2 per experience: give n_experiences (a divisor of {n_classes})")
    return _split_stream(name, lambda: (train, test), options, n_classes, n_classes // 2)


_STREAMS: dict[str, Callable[[Path, StreamOptions], Stream]] = {
    "permuted-mnist": _permuted_mnist,
    "rotated-mnist": _rotated_mnist,
    "split-cifar10": _split_cifar10,
    "split-cifar100": _split_cifar100,
    "split-digits": _split_digits,
    "split-fmnist": _split_fmnist,
    "split-mnist": _split_mnist,
    "split-tinyimagenet": _split_tinyimagenet,
}


def available_streams() -> list[str]:
    """Names accepted by :func:`make_stream`, sorted (besides ``image-folder:PATH`` and ``package.module:function``)."""
    return sorted(_STREAMS)


def stream_from_benchmark(benchmark, name: str) -> Stream:
    """A :class:`Stream` around a user's Avalanche classification benchmark.

    Any benchmark of Avalanche's public API whose train and test streams have one
    experience each per step: ``class_incremental_benchmark``, ``nc_benchmark``,
    ``benchmark_from_datasets`` (with or without ``with_classes_timeline``). Samples
    are ``(x, y)`` or ``(x, y, task)``, ``x`` a tensor after the dataset's transforms.
    Experiences are rebuilt so that every sample carries its task label (0 when the
    dataset has none) and every experience the class and task attributes the plugins
    read. Classes per experience: the experience's ``classes_in_this_experience``,
    else the set of its targets; ``n_classes``: the benchmark's ``n_classes``, else
    the largest class + 1; input shape: that of the first training sample. Scenario:
    ``task-il`` if an experience has a task label other than 0, ``domain-il`` if every
    experience holds the same classes, else ``class-il``. A benchmark that lacks
    something a run needs is refused with one line that says what.
    """
    train_stream, test_stream = benchmark.train_stream, benchmark.test_stream
    n_train, n_test = len(train_stream), len(test_stream)
    if n_train == 0:
        raise ValueError(f"stream {name!r}: the benchmark has no training experience")
    if n_test != n_train:
        raise ValueError(
            f"stream {name!r}: {n_train} training experiences but {n_test} test experience(s); ckd scores "
            "every training experience on a test experience of its own (ni_benchmark has one test set for "
            "all: build per-experience test sets, e.g. with benchmark_from_datasets)"
        )
    train = [_labelled_experience(e, f"training experience {i}", name) for i, e in enumerate(train_stream)]
    test = [_labelled_experience(e, f"test experience {i}", name) for i, e in enumerate(test_stream)]
    classes = [c for _, c, _ in train]
    tasks = [t for _, _, t in train]
    largest = max(max(c) for _, c, _ in train + test)
    n_classes = max(int(getattr(benchmark, "n_classes", None) or 0), largest + 1)
    rebuilt = benchmark_from_datasets(train=[d for d, _, _ in train], test=[d for d, _, _ in test])
    _annotate(rebuilt, classes, tasks)
    if any(tasks):
        scenario = "task-il"
    elif len(classes) > 1 and all(c == classes[0] for c in classes):
        scenario = "domain-il"
    else:
        scenario = "class-il"
    return Stream(
        name=name,
        scenario=scenario,
        benchmark=rebuilt,
        n_classes=n_classes,
        input_shape=tuple(train[0][0].train()[0][0].shape),
        classes_per_experience=classes,
    )


def _labelled_experience(experience, where: str, name: str):
    """``(dataset, classes, task)`` of a user's experience: its dataset with a task label
    in every sample (0 when it has none), its sorted classes and its one task label."""

    def refuse(problem: str) -> ValueError:
        return ValueError(f"stream {name!r}: {where} {problem}")

    dataset = experience.dataset
    if not callable(getattr(dataset, "update_data_attribute", None)) or not hasattr(dataset, "targets"):
        raise refuse(
            f"holds a {type(dataset).__name__}, not an Avalanche classification dataset with targets "
            "(wrap it with avalanche.benchmarks.utils.as_classification_dataset)"
        )
    if len(dataset) == 0:
        raise refuse("has no samples")
    fields = dataset[0]
    n_fields = len(fields) if isinstance(fields, (tuple, list)) else 1
    labels = getattr(dataset, "targets_task_labels", None)
    if n_fields == 2:  # (x, y): add the task label to every sample
        values = labels.data if labels is not None else ConstantSequence(0, len(dataset))
        dataset = dataset.update_data_attribute("targets_task_labels", TaskLabels(values))
    elif n_fields == 3 and labels is None:  # (x, y, task) with no task attribute: read the third field once
        values = [int(item[2]) for item in dataset.eval()]
        dataset = dataset.update_data_attribute(
            "targets_task_labels", DataAttribute(values, "targets_task_labels", use_in_getitem=False)
        )
    elif n_fields != 3:
        raise refuse(f"yields samples of {n_fields} field(s); ckd reads (x, y) or (x, y, task label)")
    tasks = sorted(int(t) for t in dataset.targets_task_labels.uniques)
    if len(tasks) != 1:
        raise refuse(f"holds task labels {tasks}; ckd needs one task label per experience")
    for mode in (dataset.train(), dataset.eval()):
        x = mode[0][0]
        if not isinstance(x, Tensor):
            raise refuse(
                f"yields inputs of type {type(x).__name__}, not tensors: give its dataset a transform "
                "that makes tensors (torchvision's ToTensor)"
            )
    known = getattr(experience, "classes_in_this_experience", None)
    classes = sorted({int(c) for c in (known if known is not None else dataset.targets)})
    if classes[0] < 0:
        raise refuse(f"has class {classes[0]}; classes must be integers >= 0")
    return dataset, classes, tasks[0]


def _user_stream(name: str, root: Path, options: StreamOptions) -> Stream:
    """The stream ``package.module:function`` returns (a :class:`Stream` or an Avalanche benchmark).

    It gets ``seed``, ``data_root`` and ``checksum`` if it declares them, and each
    other option the user set (``n_experiences=4``...), which it must declare.
    """
    from dataclasses import asdict

    from ckd.data.user_code import call_with_accepted, load_callable

    function = load_callable(name, "stream")
    always = {"seed": options.seed, "data_root": root, "checksum": options.checksum}
    unset = asdict(StreamOptions())
    chosen = {k: v for k, v in asdict(options).items() if k not in always and v != unset[k]}
    built = call_with_accepted(function, name, {**always, **chosen}, always)
    if isinstance(built, Stream):
        return built
    if not hasattr(built, "train_stream") or not hasattr(built, "test_stream"):
        raise ValueError(f"stream {name!r} returned {type(built).__name__}, not an Avalanche benchmark or a ckd Stream")
    return stream_from_benchmark(built, name)


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
    checksum: bool = True,
) -> Stream:
    """Build stream ``name`` (see :func:`available_streams`), read the images of
    ``image-folder:PATH``, or call a user's ``package.module:function`` with the options it
    declares (see :func:`stream_from_benchmark`).

    ``seed`` fixes permutations, angles, the digits train/test split, the
    validation split and subsampling; the class order of split streams is fixed.
    ``n_experiences``: default 5 for split streams over 10 classes (must divide
    the number of classes), 10 for split-cifar100 and split-tinyimagenet, 20 for
    permuted/rotated. ``task_labels``: task-incremental split streams.
    ``validation_fraction > 0``: each test experience is instead a stratified,
    seeded slice of the training data, removed from training. ``max_*_per_experience``:
    seeded class-proportional subsampling. ``checksum=False`` skips the MD5 and
    file-count checks. Raises :class:`DatasetNotFoundError` when a dataset's files
    are missing or corrupt under ``data_root``.
    """
    from ckd.data.user_code import is_reference

    if name not in _STREAMS and not is_reference(name) and not is_image_folder(name):
        raise ValueError(
            f"unknown stream {name!r}; available: {', '.join(available_streams())}, "
            "image-folder:PATH or package.module:function"
        )
    options = StreamOptions(
        seed=seed,
        n_experiences=n_experiences,
        task_labels=task_labels,
        validation_fraction=validation_fraction,
        max_train_per_experience=max_train_per_experience,
        max_test_per_experience=max_test_per_experience,
        checksum=checksum,
    )
    if is_image_folder(name):
        return _image_folder(name, options)
    if is_reference(name):
        return _user_stream(name, resolve_data_root(data_root), options)
    return _STREAMS[name](resolve_data_root(data_root), options)
