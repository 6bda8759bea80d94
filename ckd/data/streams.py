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

import os
from pathlib import Path
from typing import Callable

from torch import Tensor

from ckd.data.augmentation import (
    CIFAR10_NORMALIZATION,
    CIFAR100_NORMALIZATION,
    TINYIMAGENET_NORMALIZATION,
    CropFlip,
    Normalization,
)
from ckd.data.dataset_files import DatasetNotFoundError, missing_files_message, resolve_data_root
from ckd.data.decoders import (
    MNIST_SIDE,
    PixelSource,
    cached_sources,
    cifar10_sources,
    cifar_sources,
    digits_sources,
    image_sources,
    mnist_sources,
    tinyimagenet_sources,
)
from ckd.data.image_files import load_image_set
from ckd.data.sampling import permutation_maps, rotation_angles, rotation_map
from ckd.data.stream import N_CLASSES, Stream, StreamOptions, domain_stream, split_stream
from ckd.data.user_code import is_reference
from ckd.data.user_streams import user_stream

__all__ = ["DER_CLASS_ORDER", "IMAGE_FOLDER", "available_streams", "is_image_folder", "make_stream"]


DER_CLASS_ORDER = tuple(range(N_CLASSES))
"""Split streams take classes in this fixed order, two per experience (DER protocol)."""


IMAGE_FOLDER = "image-folder:"


def _split_mnist(root: Path, options: StreamOptions) -> Stream:
    return split_stream("split-mnist", lambda: mnist_sources(root, "MNIST", options.checksum), options)


def _split_fmnist(root: Path, options: StreamOptions) -> Stream:
    return split_stream("split-fmnist", lambda: mnist_sources(root, "FashionMNIST", options.checksum), options)


def _der_augmentation(normalization: Normalization) -> CropFlip:
    """``RandomCrop(size, padding=4)`` then ``RandomHorizontalFlip()``, padding with black."""
    return CropFlip(padding=4, flip_probability=0.5, fill=normalization.black)


def _split_cifar10(root: Path, options: StreamOptions) -> Stream:
    load = lambda: cifar10_sources(root, options.checksum)  # noqa: E731
    return split_stream("split-cifar10", load, options, 10, 5, _der_augmentation(CIFAR10_NORMALIZATION))


def _split_cifar100(root: Path, options: StreamOptions) -> Stream:
    load = lambda: cifar_sources(root, "CIFAR100", options.checksum)  # noqa: E731
    return split_stream("split-cifar100", load, options, 100, 10, _der_augmentation(CIFAR100_NORMALIZATION))


def _split_tinyimagenet(root: Path, options: StreamOptions) -> Stream:
    def load() -> tuple[PixelSource, PixelSource]:
        train, test = tinyimagenet_sources(root, options.checksum)
        if (n := int(train.labels.max()) + 1) != 200:
            problem = f"split-tinyimagenet needs the 200 classes of Tiny ImageNet, wnids.txt lists {n}"
            raise DatasetNotFoundError(missing_files_message(root, "TinyImageNet", problem))
        return train, test

    augmentation = _der_augmentation(TINYIMAGENET_NORMALIZATION)
    return split_stream("split-tinyimagenet", load, options, 200, 10, augmentation)


def _split_digits(root: Path, options: StreamOptions) -> Stream:
    return split_stream("split-digits", lambda: digits_sources(options.seed), options)


def _permuted_mnist(root: Path, options: StreamOptions) -> Stream:
    n_pixels = MNIST_SIDE * MNIST_SIDE
    return domain_stream("permuted-mnist", root, options, lambda n: permutation_maps(n, n_pixels, options.seed))


def _rotated_mnist(root: Path, options: StreamOptions) -> Stream:
    def maps(n: int) -> list[Tensor]:
        return [rotation_map(a, MNIST_SIDE, MNIST_SIDE) for a in rotation_angles(n, options.seed)]

    return domain_stream("rotated-mnist", root, options, maps)


def is_image_folder(name: str) -> bool:
    """Whether stream ``name`` is ``image-folder:PATH``."""
    return name.startswith(IMAGE_FOLDER) and len(name) > len(IMAGE_FOLDER)


def _image_folder(name: str, options: StreamOptions) -> Stream:
    """``image-folder:PATH``: the images of folder (or tar archive) ``PATH``, class-incremental,
    normalised with their training set's channel means and stds, not augmented."""
    path = Path(name[len(IMAGE_FOLDER):]).expanduser()

    def decode() -> tuple[PixelSource, PixelSource]:
        try:
            image_set = load_image_set(path)
        except FileNotFoundError as err:
            raise DatasetNotFoundError(f"{err}; {IMAGE_FOLDER}PATH reads PATH/train/<class>/<image> and PATH/test/<class>/<image>") from err
        except ValueError as err:
            raise DatasetNotFoundError(str(err)) from err
        mean, std = image_set.channel_stats()
        return image_sources(image_set, Normalization(mean, std))

    train, test = cached_sources(path, True, decode)
    n_classes = int(train.labels.max()) + 1
    if options.n_experiences is None and n_classes % 2:
        raise ValueError(f"{name} has {n_classes} classes, not 2 per experience: give n_experiences (a divisor of {n_classes})")
    return split_stream(name, lambda: (train, test), options, n_classes, n_classes // 2)


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
        return user_stream(name, resolve_data_root(data_root), options)
    return _STREAMS[name](resolve_data_root(data_root), options)
