"""Class-per-folder image sets, decoded once into uint8 arrays and cached on disk.

An image set is ``train/<class>/<image>`` and ``test/<class>/<image>``, as torchvision's
``ImageFolder`` reads each split, in a folder or in a tar archive (plain, gzip, bzip2 or
xz; ``train/`` and ``test/`` at its top or under one top folder, read straight from the
archive). Label ``k`` is the ``k``-th class folder by name; rows follow the labels, then
the file names. Hidden files and files without an image suffix (:data:`IMAGE_SUFFIXES`)
are skipped. Every image is decoded with Pillow and converted to RGB, as ``ImageFolder``
does, and all must have one size.

Decoding takes seconds (CIFAR-10's 60,000 JPEGs: about 7 s), so the arrays are cached
in an ``.npz`` named after what was decoded: an archive's MD5 and size, a folder's file
names, sizes and modification times; a changed archive or folder never reads a stale
cache. The cache is in ``$CKD_CACHE_DIR`` if set, else beside the archive (inside the
folder) when that folder may be written, else in ``ckd/`` under the user cache dir
(``$XDG_CACHE_HOME``, default ``~/.cache``). It is written to a temporary file and
renamed, so no partial cache is ever left behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from ckd.common.files import md5sum, write_file_atomic

__all__ = ["CACHE_DIR_ENV", "IMAGE_SUFFIXES", "ImageSet", "cache_dirs", "load_image_set"]

CACHE_DIR_ENV = "CKD_CACHE_DIR"
IMAGE_SUFFIXES = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"})
SPLITS = ("train", "test")
_CACHE_FORMAT = "v1"
"""Part of every cache name: change it when the cached arrays change meaning."""


@dataclass(frozen=True)
class ImageSet:
    """Decoded images: per split ``images (N, 3, H, W)`` uint8 RGB and ``labels (N,)`` int64,
    label ``k`` being class folder ``classes[k]``; rows by label, then by file name."""

    classes: tuple[str, ...]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.train_images.shape[1:])

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Images per class, ``(K,)`` for the train and the test split."""
        k = len(self.classes)
        return np.bincount(self.train_labels, minlength=k), np.bincount(self.test_labels, minlength=k)

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training pixels in [0, 1]; a constant channel gets std 1."""
        mean = self.train_images.mean(axis=(0, 2, 3), dtype=np.float64) / 255
        std = self.train_images.std(axis=(0, 2, 3), dtype=np.float64) / 255
        return tuple(mean.tolist()), tuple(np.where(std > 0, std, 1.0).tolist())


@dataclass(frozen=True)
class _Entry:
    """One image file: its split, class folder and file name, where to say it is, its bytes or path."""

    split: str
    label: str
    name: str
    where: str
    data: bytes | Path


def load_image_set(
    path: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    image_size: tuple[int, int] | None = None,
    per_class: tuple[int, int] | None = None,
    md5: str | None = None,
) -> ImageSet:
    """The image set in folder or tar archive ``path``, from its disk cache when there is one.

    ``classes``: the class folders there must be, in label order (default: those found,
    sorted). ``image_size``: ``(width, height)`` of every image (default: that of the first).
    ``per_class``: the ``(train, test)`` number of images of every class. ``md5``: the
    archive's MD5. Raises ``FileNotFoundError`` if ``path`` does not exist, else a one-line
    ``ValueError`` naming the file at fault.
    """
    path = Path(path)
    entries = None
    if path.is_dir():
        entries = _folder_entries(path)
        fingerprint = _fingerprint(entries)
    elif path.is_file():
        got = md5sum(path)
        if md5 is not None and got != md5:
            raise ValueError(f"{path} is corrupt (md5 {got}, expected {md5})")
        fingerprint = f"{got}-{path.stat().st_size}"
    else:
        raise FileNotFoundError(f"{path} does not exist")
    cache_name = f"{path.name}.{fingerprint}.{_CACHE_FORMAT}.npz"
    image_set = _read_cache(path, cache_name)
    if image_set is None:
        entries = _archive_entries(path) if entries is None else entries
        found = tuple(sorted({e.label for e in entries}))
        tally = Counter((e.split, e.label) for e in entries)
        counts = tuple(np.array([tally[split, c] for c in found]) for split in SPLITS)
        _check(path, found, counts, classes, per_class)  # before the slow part
        image_set = _decode(entries, found, image_size)
        _write_cache(path, cache_name, image_set)
    _check(path, image_set.classes, image_set.counts(), classes, per_class)
    if image_size is not None and image_set.image_shape[1:] != image_size[::-1]:
        h, w = image_set.image_shape[1:]
        raise ValueError(f"{path} holds {w}x{h} images, expected {image_size[0]}x{image_size[1]}")
    return image_set if classes is None else _in_order(image_set, tuple(classes))


# ------------------------------------------------------------------ listing


def _is_image(parts: Sequence[str]) -> bool:
    return not any(p.startswith(".") for p in parts) and PurePosixPath(parts[-1]).suffix.lower() in IMAGE_SUFFIXES


def _folder_entries(path: Path) -> list[_Entry]:
    entries = []
    for split in SPLITS:
        if not (path / split).is_dir():
            raise ValueError(f"{path} has no {split}/ folder: expected {path}/train/<class>/<image> and .../test/<class>/<image>")
        for folder in sorted(p for p in (path / split).iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = sorted(f for f in folder.iterdir() if _is_image((f.name,)) and f.is_file())
            entries += [_Entry(split, folder.name, f.name, str(f), f) for f in files]
    return entries


def _archive_entries(path: Path) -> list[_Entry]:
    """Every image of ``[top/]train|test/<class>/<file>`` in the tar archive, read in one pass."""
    entries, tops = [], set()
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) not in (3, 4) or parts[-3] not in SPLITS or not _is_image(parts):
                    continue
                tops.add(parts[0] if len(parts) == 4 else "")
                data = tar.extractfile(member).read()
                entries.append(_Entry(parts[-3], parts[-2], parts[-1], f"{member.name} in {path}", data))
            while tar.fileobj.read(1 << 20):  # to the end: a truncated or damaged gzip, bz2 or xz stream raises there
                pass
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise ValueError(f"{path} is not a readable tar archive ({type(err).__name__}: {err})") from err
    if len(tops) > 1:
        raise ValueError(f"{path} holds images under several top folders ({', '.join(sorted(tops))}), expected one")
    return entries


def _fingerprint(entries: list[_Entry]) -> str:
    """A hash of the folder's image files: names, sizes, modification times."""
    digest = hashlib.sha1()
    for entry in entries:
        stat = entry.data.stat()
        digest.update(f"{entry.split}/{entry.label}/{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


# ------------------------------------------------------------------ checks


def _check(
    path: Path,
    found: Sequence[str],
    counts: tuple[np.ndarray, np.ndarray],
    classes: Sequence[str] | None,
    per_class: tuple[int, int] | None,
) -> None:
    """The class folders and the number of images per class and split, ``counts[s][k]``."""
    if classes is not None and sorted(found) != sorted(classes):
        raise ValueError(f"{path} has class folders {' '.join(found) or '(none)'}, expected {' '.join(classes)}")
    for split, n in zip(SPLITS, counts):
        if not found or not n.all():
            empty = [c for c, k in zip(found, n) if k == 0]
            raise ValueError(f"{path} has no images in {split}/{empty[0] if empty else '<class>'}/")
    if per_class is not None:
        for split, n, expected in zip(SPLITS, counts, per_class):
            wrong = [(c, int(k)) for c, k in zip(found, n) if k != expected]
            if wrong:
                others = f" (and {len(wrong) - 1} more classes)" if len(wrong) > 1 else ""
                raise ValueError(
                    f"{path}: {split}/{wrong[0][0]}/ holds {wrong[0][1]} images, expected {expected} per class{others}"
                )


def _in_order(image_set: ImageSet, classes: tuple[str, ...]) -> ImageSet:
    """``image_set`` with label ``k`` the class ``classes[k]``, rows sorted by the new labels."""
    if classes == image_set.classes:
        return image_set
    relabel = np.array([classes.index(c) for c in image_set.classes], dtype=np.int64)
    splits = []
    for images, labels in ((image_set.train_images, image_set.train_labels), (image_set.test_images, image_set.test_labels)):
        labels = relabel[labels]
        order = np.argsort(labels, kind="stable")
        splits += [images[order], labels[order]]
    return ImageSet(classes, *splits)


# ------------------------------------------------------------------ decoding


def _pixels(entry: _Entry) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of one image."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(entry.data) if isinstance(entry.data, bytes) else entry.data) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{entry.where} is not a readable image ({err})") from err


def _decode(entries: list[_Entry], classes: tuple[str, ...], image_size: tuple[int, int] | None) -> ImageSet:
    label = {c: k for k, c in enumerate(classes)}
    by_split = [sorted((e for e in entries if e.split == s), key=lambda e: (label[e.label], e.name)) for s in SPLITS]
    first = by_split[0][0]
    width, height = image_size or _pixels(first).shape[1::-1]
    arrays = []
    for group in by_split:
        images = np.empty((len(group), 3, height, width), dtype=np.uint8)
        for row, entry in enumerate(group):
            pixels = _pixels(entry)
            if pixels.shape[:2] != (height, width):
                h, w = pixels.shape[:2]
                reason = "" if image_size else f" like {first.where}: all images must have one size"
                raise ValueError(f"{entry.where} is {w}x{h} pixels, expected {width}x{height}{reason}")
            images[row] = pixels.transpose(2, 0, 1)
        arrays += [images, np.array([label[e.label] for e in group], dtype=np.int64)]
    return ImageSet(classes, *arrays)


# ------------------------------------------------------------------ cache


def cache_dirs(path: Path) -> list[Path]:
    """Where the cache of image set ``path`` is looked for and written, in order:
    ``$CKD_CACHE_DIR`` alone if set; else the folder beside the archive (the image folder
    itself), then ``ckd/`` under the user cache dir."""
    if os.environ.get(CACHE_DIR_ENV, ""):
        return [Path(os.environ[CACHE_DIR_ENV]).expanduser()]
    user_cache = Path(os.environ.get("XDG_CACHE_HOME", "") or Path.home() / ".cache").expanduser()
    return [path if path.is_dir() else path.parent, user_cache / "ckd"]


def _writable(folder: Path) -> bool:
    """Whether ``folder`` may be written: a folder with no write bit at all (a shared,
    read-only copy) is left alone even by a user who could write it."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _read_cache(path: Path, name: str) -> ImageSet | None:
    for folder in cache_dirs(path):
        file = folder / name
        if not file.is_file():
            continue
        try:
            with np.load(file, allow_pickle=False) as arrays:
                image_set = ImageSet(
                    tuple(str(c) for c in arrays["classes"]),
                    *(arrays[k] for k in ("train_images", "train_labels", "test_images", "test_labels")),
                )
            _check_arrays(image_set)
        except Exception as err:  # any unreadable cache is decoded again and rewritten
            warnings.warn(f"ignoring the unreadable cache {file} ({err}); decoding {path} again", stacklevel=3)
            continue
        return image_set
    return None


def _check_arrays(image_set: ImageSet) -> None:
    for images, labels in ((image_set.train_images, image_set.train_labels), (image_set.test_images, image_set.test_labels)):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3 or labels.shape != images.shape[:1]:
            raise ValueError(f"arrays of shapes {images.shape} and {labels.shape}, expected (N, 3, H, W) and (N,)")
        if images.shape[2:] != image_set.train_images.shape[2:] or labels.min() < 0 or labels.max() >= len(image_set.classes):
            raise ValueError("image sizes or labels do not match")


def _write_cache(path: Path, name: str, image_set: ImageSet) -> None:
    arrays = {
        "classes": np.array(image_set.classes, dtype=str),
        "train_images": image_set.train_images,
        "train_labels": image_set.train_labels,
        "test_images": image_set.test_images,
        "test_labels": image_set.test_labels,
    }
    errors = []
    for folder in cache_dirs(path):
        if folder.is_dir() and not _writable(folder):
            errors.append(f"{folder} is read-only")
            continue
        try:
            write_file_atomic(folder / name, lambda f: np.savez(f, **arrays))
            return
        except OSError as err:
            errors.append(str(err))
    warnings.warn(f"no cache written for {path} ({'; '.join(errors)}): it will be decoded again", stacklevel=3)
