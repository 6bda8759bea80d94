"""Small synthetic datasets written in the real on-disk formats, for the loaders' tests.

* CIFAR-10: ``cifar-10-batches-py/data_batch_1..5``, ``test_batch``, ``batches.meta``,
  each a pickled dict (keys as bytes, as Python 3 writes them; the real files are
  Python 2 pickles whose keys load as ``str``) with ``data (N, 3072) uint8`` in
  channel-major order and a list of ``labels``.
* CIFAR-100: ``cifar-100-python/train``, ``test``, ``meta`` with ``fine_labels`` and
  ``coarse_labels``.
* Tiny ImageNet: ``tiny-imagenet-200/wnids.txt``, ``train/<wnid>/images/*.JPEG``,
  ``val/images/*.JPEG`` and ``val/val_annotations.txt``.

Every image is a constant colour per channel that encodes its split, class and
index (see :func:`cifar_pixel`), so a test can tell from pixels which image it got.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def cifar_pixel(split: int, label: int, index: int) -> tuple[int, int, int]:
    """The RGB value of every pixel of image ``index`` of class ``label`` in ``split`` (0 train, 1 test)."""
    return (label % 256, index % 256, 128 * split + index // 256)


def _cifar_images(split: int, labels: list[int]) -> np.ndarray:
    """``(N, 3072)`` uint8, channel-major: image ``n`` has the constant colour of :func:`cifar_pixel`."""
    counts: dict[int, int] = {}
    rows = []
    for label in labels:
        index = counts.get(label, 0)
        counts[label] = index + 1
        image = np.empty((3, 32, 32), dtype=np.uint8)
        for c, value in enumerate(cifar_pixel(split, label, index)):
            image[c] = value
        rows.append(image.reshape(-1))
    return np.stack(rows)


def _labels(n_classes: int, per_class: int, rng: np.random.Generator) -> list[int]:
    """Every class ``per_class`` times, shuffled as in the real batches."""
    return rng.permutation(np.repeat(np.arange(n_classes), per_class)).tolist()


def _dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, train_per_class: int = 10, test_per_class: int = 4, seed: int = 0) -> Path:
    """Synthetic CIFAR-10 under ``root``: the training images spread over five batches."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    train_labels = _labels(10, train_per_class, rng)
    data = _cifar_images(0, train_labels)
    for k, part in enumerate(np.array_split(np.arange(len(train_labels)), 5), 1):
        _dump(folder / f"data_batch_{k}", {
            b"batch_label": f"training batch {k} of 5".encode(),
            b"labels": [train_labels[i] for i in part],
            b"data": data[part],
            b"filenames": [f"img_{i}.png".encode() for i in part],
        })
    test_labels = _labels(10, test_per_class, rng)
    _dump(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": test_labels,
                                  b"data": _cifar_images(1, test_labels)})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 10000, b"num_vis": 3072})
    return folder


def write_cifar100(root: Path, train_per_class: int = 3, test_per_class: int = 1, seed: int = 0) -> Path:
    """Synthetic CIFAR-100 under ``root`` (fine labels 0..99, coarse labels ``fine // 5``)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    for split, name, per_class in ((0, "train", train_per_class), (1, "test", test_per_class)):
        fine = _labels(100, per_class, rng)
        _dump(folder / name, {
            b"filenames": [f"img_{i}.png".encode() for i in range(len(fine))],
            b"batch_label": name.encode(),
            b"fine_labels": fine,
            b"coarse_labels": [f // 5 for f in fine],
            b"data": _cifar_images(split, fine),
        })
    _dump(folder / "meta", {b"fine_label_names": [f"class{k}".encode() for k in range(100)],
                            b"coarse_label_names": [f"super{k}".encode() for k in range(20)]})
    return folder


def tiny_wnids(n: int = 200) -> list[str]:
    """``n`` WordNet-style ids in a deliberately unsorted order (as in the real wnids.txt)."""
    return [f"n{(7919 * k) % 10007:08d}" for k in range(n)]


def write_tinyimagenet(root: Path, train_per_class: int = 2, val_per_class: int = 1, n_classes: int = 200) -> Path:
    """Synthetic Tiny ImageNet under ``root``: 64×64 JPEGs whose colour encodes (split, class, index).

    Colours are multiples of 32 per channel, far enough apart to survive JPEG
    compression: red ``32·(class % 8)``, green ``32·(class // 8 % 8)``, blue ``32·index + 128·split``.
    One training image per class is grayscale (mode ``L``), as some real ones are.
    """
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    wnids = tiny_wnids(n_classes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    for k, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(train_per_class):
            colour = tiny_colour(0, k, i)
            image = Image.new("RGB", (64, 64), colour) if i else Image.new("L", (64, 64), colour[0])
            image.save(images / f"{wnid}_{i}.JPEG", quality=95)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    (folder / "val" / "images").mkdir(parents=True)
    lines = []
    for i in range(val_per_class):
        for k, wnid in enumerate(wnids):
            name = f"val_{len(lines)}.JPEG"
            Image.new("RGB", (64, 64), tiny_colour(1, k, i)).save(folder / "val" / "images" / name, quality=95)
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    return folder


def tiny_colour(split: int, label: int, index: int) -> tuple[int, int, int]:
    return (32 * (label % 8), 32 * (label // 8 % 8), 32 * index + 128 * split)
