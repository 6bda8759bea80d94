"""Reading the datasets' files (IDX, CIFAR pickles, JPEGs, scikit-learn's digits) into in-memory uint8
pixel sources, each file decoded once per process."""

from __future__ import annotations

import gzip
import math
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ckd.common.files import md5sum as _md5
from ckd.data.augmentation import (
    CIFAR10_NORMALIZATION,
    CIFAR100_NORMALIZATION,
    TINYIMAGENET_NORMALIZATION,
    Normalization,
)
from ckd.data.dataset_files import (
    CIFAR10_JPEG,
    CIFAR10_JPEG_MD5,
    IDX_FILES,
    LAYOUTS,
    TINYIMAGENET_ZIP_MD5,
    DatasetNotFoundError,
    checked_file,
    missing_files_message,
)
from ckd.data.image_files import ImageSet, load_image_set
from ckd.data.sampling import seeded_rng, stratified_order

__all__ = ["MNIST_SIDE", "PixelSource", "cached_sources", "cifar10_sources", "cifar_sources", "digits_sources",
           "image_sources", "mnist_sources", "tinyimagenet_sources"]


_IDX_DTYPE_CODE = 0x08


_SPLIT_SIZES = {"train": 60000, "test": 10000}


MNIST_SIDE = 28


_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
"""The class folders of the JPEG copy, in the order of CIFAR-10's labels 0..9."""


_decoded: dict[tuple[Path, bool], tuple["PixelSource", "PixelSource"]] = {}
"""Decoded (train, test) sources by (resolved dataset folder, checksum verified): each file is read once."""


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
        checked_file(root, dataset, gz_path.name, checksum)
        data = gzip.decompress(gz_path.read_bytes())
    else:
        data = plain_path.read_bytes()
    try:
        array = _parse_idx(data, n_dims)
    except ValueError as err:
        raise DatasetNotFoundError(missing_files_message(root, dataset, f"{path} is corrupt ({err})")) from err
    if n_items and array.shape[0] != n_items:
        problem = f"{path} holds {array.shape[0]} items, expected {n_items}"
        raise DatasetNotFoundError(missing_files_message(root, dataset, problem))
    return array


@dataclass(frozen=True)
class PixelSource:
    """One split of a dataset, decoded once and shared by every experience.

    ``pixels (N, P + 1)`` uint8 with a last column of zeros (the fill pixel a
    rotation maps to), ``labels (N,)`` int64, ``scale``: the value of a white pixel,
    ``normalization``: applied after dividing by ``scale`` (``None``: none),
    ``origin``: the file or folder it was decoded from (``""``: data built in memory).
    """

    pixels: Tensor
    labels: Tensor
    image_shape: tuple[int, ...]
    scale: float
    normalization: Normalization | None = None
    origin: str = ""

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
) -> PixelSource:
    flat = images.reshape(len(images), -1)
    pixels = np.zeros((len(images), flat.shape[1] + 1), dtype=np.uint8)
    pixels[:, :-1] = flat
    labels = torch.from_numpy(labels.astype(np.int64))
    return PixelSource(torch.from_numpy(pixels), labels, image_shape, scale, normalization)


def cached_sources(folder: Path, checksum: bool, decode: Callable[[], tuple[PixelSource, PixelSource]]) -> tuple[PixelSource, PixelSource]:
    """``decode()`` once per dataset folder or archive, each source's ``origin`` that path;
    a checked decode also serves unchecked requests."""
    key = folder.resolve()
    if (key, True) in _decoded:
        return _decoded[(key, True)]
    if (key, checksum) not in _decoded:
        train, test = decode()
        _decoded[(key, checksum)] = (replace(train, origin=str(key)), replace(test, origin=str(key)))
    return _decoded[(key, checksum)]


def mnist_sources(root: Path, dataset: str, checksum: bool = True) -> tuple[PixelSource, PixelSource]:
    """``(train, test)`` sources of MNIST or FashionMNIST under ``root``, decoded once per folder."""

    def decode() -> tuple[PixelSource, PixelSource]:
        shape = (1, MNIST_SIDE, MNIST_SIDE)
        splits = []
        for split, n_items in _SPLIT_SIZES.items():
            n_items = n_items if checksum else 0
            images = _read_idx(root, dataset, IDX_FILES[f"{split}-images"], 3, n_items, checksum)
            labels = _read_idx(root, dataset, IDX_FILES[f"{split}-labels"], 1, n_items, checksum)
            if len(images) != len(labels):
                problem = f"the {split} files hold {len(images)} images but {len(labels)} labels"
                raise DatasetNotFoundError(missing_files_message(root, dataset, problem))
            splits.append(_as_source(images, labels, shape, 255.0))
        return splits[0], splits[1]

    return cached_sources(root / dataset / "raw", checksum, decode)


def _unpickle(root: Path, dataset: str, name: str, checksum: bool) -> dict[str, object]:
    """A CIFAR python-version file: a pickled dict, keys as ``str`` whether the
    pickle wrote them as Python 2 strings or as bytes."""
    path = checked_file(root, dataset, name, checksum)
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as err:  # any unpickling failure means the file is not what it should be
        raise DatasetNotFoundError(missing_files_message(root, dataset, f"{path} is corrupt ({err})")) from err
    if not isinstance(entry, dict):
        problem = f"{path} is corrupt (holds a {type(entry).__name__}, not a dict)"
        raise DatasetNotFoundError(missing_files_message(root, dataset, problem))
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _cifar_split(
    root: Path, dataset: str, files: tuple[str, ...], label_key: str, n_classes: int, checksum: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 3·32·32) uint8 in CHW order, labels (N,))`` of the batches ``files``."""
    images, labels = [], []
    for name in files:
        entry = _unpickle(root, dataset, name, checksum)
        path = root / LAYOUTS[dataset].folder / name
        if "data" not in entry or label_key not in entry:
            problem = f"{path} is corrupt (no 'data' or {label_key!r} entry)"
            raise DatasetNotFoundError(missing_files_message(root, dataset, problem))
        data = np.asarray(entry["data"], dtype=np.uint8)
        label = np.asarray(entry[label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or label.shape != (data.shape[0],):
            problem = f"{path} holds data {data.shape} and labels {label.shape}, expected (N, 3072) and (N,)"
            raise DatasetNotFoundError(missing_files_message(root, dataset, problem))
        if label.size and not (0 <= label.min() and label.max() < n_classes):
            problem = f"{path} has labels outside [0, {n_classes})"
            raise DatasetNotFoundError(missing_files_message(root, dataset, problem))
        images.append(data)
        labels.append(label)
    return np.concatenate(images), np.concatenate(labels)


def cifar_sources(root: Path, dataset: str, checksum: bool) -> tuple[PixelSource, PixelSource]:
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

    def decode() -> tuple[PixelSource, PixelSource]:
        names = _unpickle(root, dataset, meta, checksum).get(names_key)
        if names is None or len(names) != n_classes:
            problem = f"{root / LAYOUTS[dataset].folder / meta} does not list {n_classes} {names_key}"
            raise DatasetNotFoundError(missing_files_message(root, dataset, problem))
        shape = (3, 32, 32)
        return tuple(
            _as_source(*_cifar_split(root, dataset, files, label_key, n_classes, checksum), shape, 255.0, normalization)
            for files in (train_files, test_files)
        )

    return cached_sources(root / LAYOUTS[dataset].folder, checksum, decode)


def cifar10_sources(root: Path, checksum: bool) -> tuple[PixelSource, PixelSource]:
    """CIFAR-10 from torchvision's ``cifar-10-batches-py/``, else from the JPEG copy
    ``CIFAR10-JPEG/cifar10-jpeg.tar.gz``; decoded once per folder or archive."""
    folder, archive = root / LAYOUTS["CIFAR10"].folder, root / CIFAR10_JPEG
    if folder.is_dir() or not archive.is_file():
        if not folder.is_dir():
            problem = f"neither {folder} nor the JPEG copy {archive} exists"
            raise DatasetNotFoundError(missing_files_message(root, "CIFAR10", problem))
        return cifar_sources(root, "CIFAR10", checksum)

    def decode() -> tuple[PixelSource, PixelSource]:
        try:
            image_set = load_image_set(
                archive,
                classes=_CIFAR10_CLASSES,
                image_size=(32, 32),
                per_class=(5000, 1000) if checksum else None,
                md5=CIFAR10_JPEG_MD5 if checksum else None,
            )
        except ValueError as err:
            fix = "--no-checksum accepts a re-packed copy" if checksum else f"the shared copy has md5 {CIFAR10_JPEG_MD5}"
            raise DatasetNotFoundError(f"CIFAR-10 not usable: {err}; copy {archive.name} again ({fix})") from err
        return image_sources(image_set, CIFAR10_NORMALIZATION)

    return cached_sources(archive, checksum, decode)


def image_sources(image_set: ImageSet, normalization: Normalization) -> tuple[PixelSource, PixelSource]:
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


def tinyimagenet_sources(root: Path, checksum: bool) -> tuple[PixelSource, PixelSource]:
    """``(train, test = official val)`` of Tiny ImageNet under ``root``; class ``k`` is
    line ``k`` of ``wnids.txt``. Decoded once per folder (about 110,000 JPEGs)."""
    dataset, folder = "TinyImageNet", root / LAYOUTS["TinyImageNet"].folder

    def fail(problem: str) -> DatasetNotFoundError:
        return DatasetNotFoundError(missing_files_message(root, dataset, problem))

    def decode() -> tuple[PixelSource, PixelSource]:
        wnids = [w.strip() for w in checked_file(root, dataset, "wnids.txt", checksum).read_text().split() if w.strip()]
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
        annotations = checked_file(root, dataset, "val/val_annotations.txt", checksum).read_text().splitlines()
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
            sources.append(PixelSource(torch.from_numpy(pixels), labels, shape, 255.0, TINYIMAGENET_NORMALIZATION))
        return sources[0], sources[1]

    return cached_sources(folder, checksum, decode)


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
    if archive.is_file() and (got := _md5(archive)) != TINYIMAGENET_ZIP_MD5:
        raise fail(f"{archive} is corrupt (md5 {got}, expected {TINYIMAGENET_ZIP_MD5})")


def digits_sources(seed: int) -> tuple[PixelSource, PixelSource]:
    """``(train, test)``: a seeded, stratified 70/30 split of scikit-learn's digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images.astype(np.uint8), digits.target.astype(np.int64)
    order = stratified_order(labels, seeded_rng(seed, "digits-test-split"))
    n_test = round(0.3 * len(labels))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    shape = (1, 8, 8)
    return _as_source(images[train], labels[train], shape, 16.0), _as_source(images[test], labels[test], shape, 16.0)
