"""Tests for ``ckd.data.streams``: the seeded task streams and their data loading.

MNIST-based tests read the data root from ``CKD_DATA_ROOT`` and are skipped when
the files are not there; raw IDX files are decoded here independently of
``ckd.data.streams`` to serve as the reference.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import ckd.data.decoders as decoders
import ckd.data.sampling as sampling
from ckd.data.dataset_files import DatasetNotFoundError, resolve_data_root
from ckd.data.stream import Stream
from ckd.data.streams import available_streams, make_stream

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
SPLIT_CLASSES = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def mnist_root() -> Path:
    root = os.environ.get("CKD_DATA_ROOT", "")
    if not root or not all((Path(root) / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES):
        pytest.skip("MNIST not found: set CKD_DATA_ROOT to the folder holding MNIST/raw/*.gz")
    return Path(root)


@pytest.fixture(scope="module")
def fmnist_root(mnist_root: Path) -> Path:
    if not all((mnist_root / "FashionMNIST" / "raw" / f).is_file() for f in MNIST_FILES):
        pytest.skip("FashionMNIST not found under CKD_DATA_ROOT")
    return mnist_root


def read_raw(root: Path, dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reference decoding: ``(images (N, 784) uint8, labels (N,) int64)``."""
    prefix = "train" if split == "train" else "t10k"
    raw = root / dataset / "raw"
    images = np.frombuffer(gzip.decompress((raw / f"{prefix}-images-idx3-ubyte.gz").read_bytes()), np.uint8, offset=16)
    labels = np.frombuffer(gzip.decompress((raw / f"{prefix}-labels-idx1-ubyte.gz").read_bytes()), np.uint8, offset=8)
    return images.reshape(len(labels), -1).copy(), labels.astype(np.int64)


def load_all(dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every ``(x, y, task)`` of an Avalanche dataset, in order."""
    batches = list(DataLoader(dataset, batch_size=512, shuffle=False))
    return tuple(torch.cat([b[k] for b in batches]) for k in range(3))


def same(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return len(a) == len(b) and all(u.shape == v.shape and torch.equal(u, v) for u, v in zip(a, b))


def row_keys(x: torch.Tensor | np.ndarray) -> set[bytes]:
    """One hashable key per image, from its uint8 pixels."""
    if isinstance(x, torch.Tensor) and x.dtype == torch.float32:
        x = (x * 255).round().to(torch.uint8)
    array = np.asarray(x).reshape(len(x), -1)
    return {r.tobytes() for r in array}


def tiny(name: str, root: Path, **kwargs) -> Stream:
    kwargs.setdefault("max_train_per_experience", 60)
    kwargs.setdefault("max_test_per_experience", 40)
    return make_stream(name, data_root=root, **kwargs)


# ------------------------------------------------------- registry and options


def test_available_streams():
    assert available_streams() == [
        "permuted-mnist", "rotated-mnist", "split-cifar10", "split-cifar100", "split-digits", "split-fmnist",
        "split-mnist", "split-tinyimagenet",
    ]


def test_unknown_name_lists_available_streams():
    with pytest.raises(ValueError, match="split-cifar") as err:
        make_stream("split-cifar")
    for name in available_streams():
        assert name in str(err.value)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"n_experiences": 0}, "n_experiences"),
        ({"n_experiences": 3}, "n_experiences"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"validation_fraction": -0.1}, "validation_fraction"),
        ({"max_train_per_experience": 0}, "max_train_per_experience"),
        ({"max_test_per_experience": -5}, "max_test_per_experience"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_numbers_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        make_stream("split-digits", **kwargs)


@pytest.mark.parametrize("name", ["permuted-mnist", "rotated-mnist"])
def test_task_labels_rejected_for_domain_streams(name, tmp_path):
    with pytest.raises(ValueError, match="task_labels"):
        make_stream(name, data_root=tmp_path, task_labels=True)


def test_resolve_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("CKD_DATA_ROOT", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root() == tmp_path / "env"
    monkeypatch.delenv("CKD_DATA_ROOT")
    assert resolve_data_root() == tmp_path / "xdg" / "ckd" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_root() == tmp_path / "home" / ".cache" / "ckd" / "data"
    assert not (tmp_path / "home").exists()


# --------------------------------------------------------------- split-digits


def test_split_digits_layout():
    stream = make_stream("split-digits", seed=3)
    bench = stream.benchmark
    assert (stream.name, stream.scenario, stream.n_classes) == ("split-digits", "class-il", 10)
    assert stream.input_shape == (1, 8, 8)
    assert stream.classes_per_experience == SPLIT_CLASSES
    assert len(bench.train_stream) == len(bench.test_stream) == 5
    n_train = n_test = 0
    for i, (train_exp, test_exp) in enumerate(zip(bench.train_stream, bench.test_stream)):
        for exp in (train_exp, test_exp):
            assert exp.current_experience == i
            assert list(exp.classes_in_this_experience) == SPLIT_CLASSES[i]
            assert exp.task_labels == [0]
            assert set(exp.dataset.targets) == set(SPLIT_CLASSES[i])
            assert set(exp.dataset.targets_task_labels) == {0}
        assert train_exp.previous_classes == [c for cs in SPLIT_CLASSES[:i] for c in cs]
        x, y, task = next(iter(DataLoader(train_exp.dataset, batch_size=16, shuffle=True)))
        assert x.shape == (16, 1, 8, 8) and x.dtype == torch.float32
        assert y.dtype == torch.long and task.dtype == torch.long
        assert set(y.tolist()) <= set(SPLIT_CLASSES[i]) and task.eq(0).all()
        n_train, n_test = n_train + len(train_exp.dataset), n_test + len(test_exp.dataset)
    assert n_train + n_test == 1797
    assert n_test == round(0.3 * 1797)


def test_split_digits_pixels_and_stratified_test_split():
    stream = make_stream("split-digits")
    x, y, task = stream.test_tensors(0)
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8)
    assert 0.0 <= x.min() and x.max() == 1.0
    assert torch.equal(x * 16, (x * 16).round())
    test_counts = torch.zeros(10)
    train_counts = torch.zeros(10)
    for i in range(5):
        test_counts += torch.bincount(stream.test_tensors(i)[1], minlength=10)
        train_targets = torch.tensor(list(stream.benchmark.train_stream[i].dataset.targets))
        train_counts += torch.bincount(train_targets, minlength=10)
    fraction = test_counts / (test_counts + train_counts)
    assert ((fraction - 0.3).abs() < 0.02).all()


def test_test_tensors_match_the_test_dataset_and_are_fresh():
    stream = make_stream("split-digits", task_labels=True)
    for i in range(5):
        x, y, task = stream.test_tensors(i)
        ref_x, ref_y, ref_task = load_all(stream.benchmark.test_stream[i].dataset)
        assert torch.equal(x, ref_x) and torch.equal(y, ref_y) and torch.equal(task, ref_task)
        assert y.dtype == task.dtype == torch.long
    x, y, _ = stream.test_tensors(2)
    x.zero_()
    y.zero_()
    again_x, again_y, _ = stream.test_tensors(2)
    assert again_x.max() == 1.0 and set(again_y.tolist()) == {4, 5}


def test_split_digits_task_incremental():
    stream = make_stream("split-digits", task_labels=True)
    assert stream.scenario == "task-il"
    for i, exp in enumerate(stream.benchmark.train_stream):
        assert exp.task_label == i and exp.task_labels == [i]
        _, y, task = load_all(exp.dataset)
        assert task.eq(i).all()
        assert set(y.tolist()) == set(SPLIT_CLASSES[i])
        assert stream.test_tensors(i)[2].eq(i).all()


def test_split_digits_seeding():
    a, b, c = (make_stream("split-digits", seed=s) for s in (0, 0, 1))
    for i in range(5):
        assert same(a.test_tensors(i), b.test_tensors(i))
        assert same(load_all(a.benchmark.train_stream[i].dataset), load_all(b.benchmark.train_stream[i].dataset))
    assert not all(same(a.test_tensors(i), c.test_tensors(i)) for i in range(5))
    assert a.classes_per_experience == c.classes_per_experience == SPLIT_CLASSES


def test_split_digits_validation_is_carved_from_training_data():
    full = make_stream("split-digits", seed=0)
    split = make_stream("split-digits", seed=0, validation_fraction=0.2)
    test_keys = set().union(*(row_keys(full.test_tensors(i)[0]) for i in range(5)))
    for i in range(5):
        full_train = row_keys(load_all(full.benchmark.train_stream[i].dataset)[0])
        train = row_keys(load_all(split.benchmark.train_stream[i].dataset)[0])
        val_x, val_y, _ = split.test_tensors(i)
        val = row_keys(val_x)
        assert val and not (val & train) and not (val & test_keys)
        assert val | train == full_train
        assert set(val_y.tolist()) == set(SPLIT_CLASSES[i])
        assert abs(len(val) - 0.2 * len(full_train)) <= 2


def test_subsampling_limits_and_keeps_classes():
    stream = make_stream("split-digits", max_train_per_experience=30, max_test_per_experience=10)
    for i, exp in enumerate(stream.benchmark.train_stream):
        assert len(exp.dataset) == 30 and len(stream.benchmark.test_stream[i].dataset) == 10
        counts = Counter(exp.dataset.targets)
        assert set(counts) == set(SPLIT_CLASSES[i]) and abs(counts[2 * i] - counts[2 * i + 1]) <= 2


def test_avalanche_strategy_trains_and_evaluates_on_a_stream():
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import Naive

    torch.manual_seed(0)
    stream = make_stream("split-digits", max_train_per_experience=64)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    strategy = Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        train_mb_size=16,
        train_epochs=1,
        eval_mb_size=64,
        device="cpu",
        evaluator=EvaluationPlugin(loggers=[]),
    )
    for exp in stream.benchmark.train_stream[:2]:
        strategy.train(exp)
    strategy.eval(stream.benchmark.test_stream[:2])


# ---------------------------------------------------------------------- MNIST


@pytest.mark.mnist
def test_split_mnist_full_size_matches_the_raw_files(mnist_root):
    stream = make_stream("split-mnist", data_root=mnist_root)
    raw_x, raw_y = read_raw(mnist_root, "MNIST", "test")
    assert (stream.scenario, stream.input_shape) == ("class-il", (1, 28, 28))
    assert stream.classes_per_experience == SPLIT_CLASSES
    train_sizes = [len(exp.dataset) for exp in stream.benchmark.train_stream]
    test_sizes = [len(exp.dataset) for exp in stream.benchmark.test_stream]
    assert sum(train_sizes) == 60000 and sum(test_sizes) == 10000
    assert train_sizes == [MNIST_TRAIN_COUNTS[a] + MNIST_TRAIN_COUNTS[b] for a, b in SPLIT_CLASSES]
    for i, exp in enumerate(stream.benchmark.train_stream):
        assert set(exp.dataset.targets) == set(SPLIT_CLASSES[i])
        assert list(exp.classes_in_this_experience) == SPLIT_CLASSES[i]
        x, y, task = stream.test_tensors(i)
        keep = np.isin(raw_y, SPLIT_CLASSES[i])
        assert x.shape == (keep.sum(), 1, 28, 28) and x.dtype == torch.float32
        assert torch.equal(y, torch.from_numpy(raw_y[keep]))
        assert torch.equal(x, torch.from_numpy(raw_x[keep]).float().div(255).view(-1, 1, 28, 28))
        assert task.eq(0).all()
    x, y, task = exp.dataset[0]
    assert x.shape == (1, 28, 28) and 0.0 <= x.min() and x.max() <= 1.0 and (y, task) in {(8, 0), (9, 0)}


@pytest.mark.mnist
def test_split_mnist_task_incremental_keeps_original_labels(mnist_root):
    stream = tiny("split-mnist", mnist_root, task_labels=True)
    assert stream.scenario == "task-il"
    for i, (train_exp, test_exp) in enumerate(zip(stream.benchmark.train_stream, stream.benchmark.test_stream)):
        _, y, task = load_all(train_exp.dataset)
        assert set(y.tolist()) == set(SPLIT_CLASSES[i]) and task.eq(i).all()
        assert test_exp.task_label == i
        assert set(stream.test_tensors(i)[1].tolist()) == set(SPLIT_CLASSES[i])
        assert stream.test_tensors(i)[2].eq(i).all()


@pytest.mark.mnist
def test_split_fmnist_classes(fmnist_root):
    stream = make_stream("split-fmnist", data_root=fmnist_root, max_train_per_experience=100)
    raw_x, raw_y = read_raw(fmnist_root, "FashionMNIST", "test")
    assert stream.classes_per_experience == SPLIT_CLASSES
    for i in range(5):
        x, y, _ = stream.test_tensors(i)
        assert Counter(y.tolist()) == {c: 1000 for c in SPLIT_CLASSES[i]}
        assert row_keys(x) == row_keys(raw_x[np.isin(raw_y, SPLIT_CLASSES[i])])
        assert Counter(stream.benchmark.train_stream[i].dataset.targets) == {c: 50 for c in SPLIT_CLASSES[i]}


def column_keys(x: torch.Tensor) -> Counter:
    """Multiset of pixel columns ``(N,)`` of images ``x (N, ...)``."""
    columns = (x.reshape(len(x), -1) * 255).round().to(torch.uint8).T.contiguous().numpy()
    return Counter(c.tobytes() for c in columns)


@pytest.mark.mnist
def test_permuted_mnist_permutes_every_experience(mnist_root):
    stream = make_stream("permuted-mnist", data_root=mnist_root, n_experiences=3, max_train_per_experience=50)
    raw_x, raw_y = read_raw(mnist_root, "MNIST", "test")
    raw = torch.from_numpy(raw_x).float().div(255)
    assert (stream.scenario, len(stream.benchmark.train_stream)) == ("domain-il", 3)
    assert stream.classes_per_experience == [list(range(10))] * 3
    seen = []
    for i in range(3):
        x, y, task = stream.test_tensors(i)
        assert x.shape == (10000, 1, 28, 28) and torch.equal(y, torch.from_numpy(raw_y)) and task.eq(0).all()
        assert column_keys(x) == column_keys(raw)
        assert not torch.equal(x.reshape(10000, -1), raw)
        assert all(not torch.equal(x, other) for other in seen)
        seen.append(x)
        train_exp = stream.benchmark.train_stream[i]
        assert set(train_exp.dataset.targets) == set(range(10)) and train_exp.task_labels == [0]


@pytest.mark.mnist
def test_permuted_mnist_default_length_and_full_sets(mnist_root):
    stream = make_stream("permuted-mnist", data_root=mnist_root)
    assert len(stream.benchmark.train_stream) == len(stream.benchmark.test_stream) == 20
    assert all(len(exp.dataset) == 60000 for exp in stream.benchmark.train_stream)
    assert all(len(exp.dataset) == 10000 for exp in stream.benchmark.test_stream)


@pytest.mark.mnist
def test_rotated_mnist_rotates_whole_images(mnist_root):
    from torchvision.transforms.functional import rotate

    stream = make_stream("rotated-mnist", data_root=mnist_root, n_experiences=3, seed=5, max_train_per_experience=50)
    raw_x, raw_y = read_raw(mnist_root, "MNIST", "test")
    raw = torch.from_numpy(raw_x[:500]).view(-1, 1, 28, 28)
    angles = sampling.rotation_angles(3, 5)
    assert all(0.0 <= a < 180.0 for a in angles) and len(set(angles)) == 3
    assert angles != sampling.rotation_angles(3, 6)
    for i, angle in enumerate(angles):
        x, y, _ = stream.test_tensors(i)
        assert torch.equal(y, torch.from_numpy(raw_y))
        assert torch.equal(x[:500], rotate(raw, angle).float().div(255))
        assert torch.equal(x[:500], rotate(raw.float().div(255), angle))
    assert stream.classes_per_experience == [list(range(10))] * 3


@pytest.mark.mnist
@pytest.mark.parametrize("name", ["permuted-mnist", "rotated-mnist", "split-mnist"])
def test_mnist_streams_are_seeded(mnist_root, name):
    n = None if name == "split-mnist" else 2
    a, b, c = (tiny(name, mnist_root, seed=s, n_experiences=n) for s in (7, 7, 8))
    differs = False
    for i in range(len(a.classes_per_experience)):
        assert same(a.test_tensors(i), b.test_tensors(i))
        train_a, train_b, train_c = (load_all(s.benchmark.train_stream[i].dataset) for s in (a, b, c))
        assert same(train_a, train_b)
        differs = differs or not same(train_a, train_c) or not same(a.test_tensors(i), c.test_tensors(i))
    assert differs


@pytest.mark.mnist
def test_mnist_validation_leaves_the_test_set_untouched(mnist_root):
    stream = make_stream("split-mnist", data_root=mnist_root, validation_fraction=0.1)
    train_x, _ = read_raw(mnist_root, "MNIST", "train")
    test_x, _ = read_raw(mnist_root, "MNIST", "test")
    train_keys, test_keys = row_keys(train_x), row_keys(test_x)
    val_sizes = [len(exp.dataset) for exp in stream.benchmark.test_stream]
    train_sizes = [len(exp.dataset) for exp in stream.benchmark.train_stream]
    assert sum(val_sizes) == 6000 and sum(train_sizes) == 54000
    for i in range(5):
        val_x, val_y, _ = stream.test_tensors(i)
        val = row_keys(val_x)
        assert val <= train_keys and not (val & test_keys)
        assert set(val_y.tolist()) == set(SPLIT_CLASSES[i])
    first_train = row_keys(load_all(stream.benchmark.train_stream[0].dataset)[0])
    assert not (first_train & row_keys(stream.test_tensors(0)[0]))


@pytest.mark.mnist
def test_domain_validation_is_one_split_shared_by_all_experiences(mnist_root):
    stream = tiny("permuted-mnist", mnist_root, n_experiences=2, validation_fraction=0.05, max_test_per_experience=None)
    assert [len(exp.dataset) for exp in stream.benchmark.test_stream] == [3000, 3000]
    assert torch.equal(stream.test_tensors(0)[1], stream.test_tensors(1)[1])


# ---------------------------------------------------------------- data files


def copy_mnist(src: Path, dst: Path) -> Path:
    raw = dst / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copyfile(src / "MNIST" / "raw" / name, raw / name)
    return raw


@pytest.mark.parametrize(
    "name, dataset", [("split-mnist", "MNIST"), ("split-fmnist", "FashionMNIST"), ("rotated-mnist", "MNIST")]
)
def test_missing_data_root_names_the_expected_files(tmp_path, name, dataset):
    with pytest.raises(DatasetNotFoundError) as err:
        make_stream(name, data_root=tmp_path)
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    for file in MNIST_FILES:
        assert str(tmp_path / dataset / "raw" / file) in message
    assert "--data-root" in message and "CKD_DATA_ROOT" in message


def test_data_root_falls_back_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CKD_DATA_ROOT", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetNotFoundError, match="elsewhere"):
        make_stream("split-mnist")


@pytest.mark.mnist
def test_corrupt_file_is_rejected(mnist_root, tmp_path):
    raw = copy_mnist(mnist_root, tmp_path)
    target = raw / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DatasetNotFoundError, match="corrupt") as err:
        make_stream("split-mnist", data_root=tmp_path)
    assert str(target) in str(err.value)


@pytest.mark.mnist
def test_extracted_idx_files_are_accepted(mnist_root, tmp_path):
    raw = copy_mnist(mnist_root, tmp_path)
    for name in MNIST_FILES:
        gz = raw / name
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    extracted = tiny("split-mnist", tmp_path)
    reference = tiny("split-mnist", mnist_root)
    for i in range(5):
        assert all(torch.equal(u, v) for u, v in zip(extracted.test_tensors(i), reference.test_tensors(i)))


@pytest.mark.mnist
def test_files_are_decoded_once_per_root(mnist_root, monkeypatch):
    make_stream("split-mnist", data_root=mnist_root, max_train_per_experience=5)

    def no_reading(*args, **kwargs):
        raise AssertionError("MNIST files were read again")

    monkeypatch.setattr(decoders, "_read_idx", no_reading)
    make_stream("permuted-mnist", data_root=mnist_root, n_experiences=1, max_train_per_experience=5)


def test_nothing_touches_the_network(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    make_stream("split-digits")
    with pytest.raises(DatasetNotFoundError):
        make_stream("split-mnist", data_root=tmp_path)
    root = os.environ.get("CKD_DATA_ROOT", "")
    if root and (Path(root) / "MNIST" / "raw" / MNIST_FILES[0]).is_file():
        decoders._decoded.clear()
        tiny("rotated-mnist", Path(root), n_experiences=2)


# ------------------------------------------- CIFAR and Tiny ImageNet (synthetic archives)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """Synthetic CIFAR-10, CIFAR-100 and Tiny ImageNet in their real formats (see tests/archives.py)."""
    from archives import write_cifar10, write_cifar100, write_tinyimagenet

    root = tmp_path_factory.mktemp("images")
    write_cifar10(root, train_per_class=10, test_per_class=4)
    write_cifar100(root, train_per_class=3, test_per_class=1)
    write_tinyimagenet(root, train_per_class=2, val_per_class=1)
    return root


def pixels_255(stream: Stream, x: torch.Tensor) -> torch.Tensor:
    """Undo the stream's normalisation: ``x (N, C, H, W)`` back to 0..255."""
    mean = torch.tensor(stream.normalization.mean).view(1, -1, 1, 1)
    std = torch.tensor(stream.normalization.std).view(1, -1, 1, 1)
    return (x * std + mean) * 255


def test_split_cifar10_classes_shapes_and_pixels(image_root):
    from archives import cifar_pixel

    stream = make_stream("split-cifar10", data_root=image_root, checksum=False)
    assert stream.classes_per_experience == SPLIT_CLASSES and stream.n_classes == 10
    assert stream.input_shape == (3, 32, 32) and stream.scenario == "class-il"
    assert stream.normalization.mean == (0.4914, 0.4822, 0.4465)
    assert stream.augmentation.padding == 4 and stream.augmentation.flip_probability == 0.5
    assert stream.augmentation.fill == pytest.approx(stream.normalization.black)
    seen = set()
    for i, classes in enumerate(SPLIT_CLASSES):
        for split, experience in ((0, stream.benchmark.train_stream[i]), (1, stream.benchmark.test_stream[i])):
            x, y, task = load_all(experience.dataset)
            assert x.shape == ((20 if split == 0 else 8), 3, 32, 32) and x.dtype == torch.float32
            assert sorted(set(y.tolist())) == classes and not task.any()
            values = pixels_255(stream, x)
            assert (values - values.round()).abs().max() < 1e-3  # exact bytes, normalised
            colours = values[:, :, 0, 0].round().long()
            assert torch.equal(colours[:, 0], y)  # the red channel encodes the label the file gave
            assert (colours[:, 2] == 128 * split).all()
            assert (values == values[:, :, :1, :1]).all()  # channel-major decoding keeps images constant
            seen |= {(split, int(c[0]), int(c[1])) for c in colours}
    expected = {(0, k, i) for k in range(10) for i in range(10)} | {(1, k, i) for k in range(10) for i in range(4)}
    assert seen == {(s, *cifar_pixel(s, k, i)[:2]) for s, k, i in expected}
    x, y, _ = stream.test_tensors(4)
    assert torch.equal(x, load_all(stream.benchmark.test_stream[4].dataset)[0]) and set(y.tolist()) == {8, 9}


def test_split_cifar10_task_incremental(image_root):
    stream = make_stream("split-cifar10", data_root=image_root, checksum=False, task_labels=True)
    assert stream.scenario == "task-il"
    assert [int(load_all(e.dataset)[2].unique()) for e in stream.benchmark.train_stream] == [0, 1, 2, 3, 4]


def test_split_cifar100_experiences(image_root):
    stream = make_stream("split-cifar100", data_root=image_root, checksum=False)
    assert stream.n_experiences == 10 and stream.n_classes == 100
    assert stream.classes_per_experience[3] == list(range(30, 40))
    x, y, _ = load_all(stream.benchmark.train_stream[3].dataset)
    assert x.shape == (30, 3, 32, 32) and sorted(set(y.tolist())) == list(range(30, 40))
    assert torch.equal(pixels_255(stream, x)[:, 0, 0, 0].round().long(), y)
    assert stream.normalization.std == (0.2675, 0.2565, 0.2761)
    five = make_stream("split-cifar100", data_root=image_root, checksum=False, n_experiences=5)
    assert five.classes_per_experience[1] == list(range(20, 40))
    with pytest.raises(ValueError, match="divide 100"):
        make_stream("split-cifar100", data_root=image_root, checksum=False, n_experiences=3)


def test_split_tinyimagenet_reads_wnids_order_and_validation_annotations(image_root):
    from archives import tiny_colour, tiny_wnids

    assert tiny_wnids()[:3] != sorted(tiny_wnids())[:3]  # the order to follow is the file's, not sorted
    stream = make_stream("split-tinyimagenet", data_root=image_root, checksum=False)
    assert stream.n_experiences == 10 and stream.n_classes == 200 and stream.input_shape == (3, 64, 64)
    assert stream.classes_per_experience[9] == list(range(180, 200))
    assert stream.normalization.mean == (0.4802, 0.4480, 0.3975)
    x, y, _ = load_all(stream.benchmark.train_stream[0].dataset)
    assert x.shape == (40, 3, 64, 64)
    centre = pixels_255(stream, x)[:, :, 32, 32]
    expected = torch.tensor([tiny_colour(0, k, i) for k in range(20) for i in range(2)], dtype=torch.float32)
    expected[0::2] = expected[0::2, :1]  # image 0 of each class is grayscale: R copied to G and B
    assert torch.equal(y, torch.arange(20).repeat_interleave(2))  # files in class order, then by name
    assert (centre - expected).abs().max() < 6  # JPEG rounding
    xv, yv, _ = stream.test_tensors(2)
    assert sorted(yv.tolist()) == list(range(40, 60))
    colours = pixels_255(stream, xv)[:, :, 32, 32]
    want = torch.tensor([tiny_colour(1, int(k), 0) for k in yv], dtype=torch.float32)
    assert (colours - want).abs().max() < 6


def test_image_checksums_and_missing_files(image_root, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="corrupt") as err:
        make_stream("split-cifar10", data_root=image_root)  # synthetic files are not the official ones
    assert "md5" in str(err.value) and "--no-checksum" in str(err.value)
    with pytest.raises(DatasetNotFoundError, match="500 training") as err:
        make_stream("split-tinyimagenet", data_root=image_root)
    for name, folder, files in (
        ("split-cifar10", "cifar-10-batches-py", ["data_batch_1", "test_batch", "batches.meta"]),
        ("split-cifar100", "cifar-100-python", ["train", "test", "meta"]),
        ("split-tinyimagenet", "tiny-imagenet-200", ["wnids.txt", "val/val_annotations.txt"]),
    ):
        with pytest.raises(DatasetNotFoundError) as err:
            make_stream(name, data_root=tmp_path, checksum=False)
        for file in files:
            assert str(tmp_path / folder / file) in str(err.value)
        assert "--data-root" in str(err.value) and "CKD_DATA_ROOT" in str(err.value)
    assert "16019d7e3df5f24257cddd939b257f8d" in str(
        pytest.raises(DatasetNotFoundError, make_stream, "split-cifar100", data_root=tmp_path).value
    )


def test_cifar_file_with_the_wrong_content_is_rejected(tmp_path):
    import pickle

    from archives import write_cifar10

    folder = write_cifar10(tmp_path, train_per_class=1, test_per_class=1)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetNotFoundError, match="data_batch_3 is corrupt"):
        make_stream("split-cifar10", data_root=tmp_path, checksum=False)
    with (folder / "data_batch_3").open("wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DatasetNotFoundError, match=r"expected \(N, 3072\)"):
        make_stream("split-cifar10", data_root=tmp_path, checksum=False)


def test_python2_pickles_with_str_keys_read_the_same(tmp_path):
    """The official files are Python 2 pickles: with encoding='latin1' their keys load as str."""
    import pickle

    from archives import write_cifar10

    folder = write_cifar10(tmp_path, train_per_class=2, test_per_class=2)
    reference = make_stream("split-cifar10", data_root=tmp_path, checksum=False).test_tensors(0)
    decoders._decoded.clear()
    entry = pickle.loads((folder / "test_batch").read_bytes())
    with (folder / "test_batch").open("wb") as f:
        pickle.dump({k.decode(): v for k, v in entry.items()}, f, protocol=2)
    assert same(make_stream("split-cifar10", data_root=tmp_path, checksum=False).test_tensors(0), reference)


def test_image_files_are_decoded_once_per_folder(image_root, monkeypatch):
    make_stream("split-cifar100", data_root=image_root, checksum=False)

    def no_reading(*args, **kwargs):
        raise AssertionError("CIFAR-100 files were read again")

    monkeypatch.setattr(decoders, "_unpickle", no_reading)
    make_stream("split-cifar100", data_root=image_root, checksum=False, n_experiences=2, seed=4)


def test_user_stream_from_package_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_streams.py").write_text(
        "import torch\n"
        "from avalanche.benchmarks import nc_benchmark\n"
        "from torch.utils.data import TensorDataset\n"
        "class Rows(TensorDataset):\n"
        "    def __init__(self, x, y):\n"
        "        super().__init__(x, y)\n"
        "        self.targets = y.tolist()\n"
        "def two_tasks(seed, n_experiences=2):\n"
        "    g = torch.Generator().manual_seed(seed)\n"
        "    x, y = torch.randn(40, 5, generator=g), torch.arange(40) % 4\n"
        "    return nc_benchmark(Rows(x, y), Rows(x[:8], y[:8]), n_experiences, task_labels=False, seed=0,\n"
        "                        fixed_class_order=[0, 1, 2, 3])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    stream = make_stream("my_streams:two_tasks", seed=3)
    assert stream.name == "my_streams:two_tasks" and stream.scenario == "class-il"
    assert stream.classes_per_experience == [[0, 1], [2, 3]] and stream.n_classes == 4 and stream.input_shape == (5,)
    x, y, _ = stream.test_tensors(1)
    assert x.shape == (4, 5) and sorted(y.tolist()) == [2, 2, 3, 3]
    assert make_stream("my_streams:two_tasks", seed=3, n_experiences=4).n_experiences == 4
    with pytest.raises(ValueError, match="validation_fraction"):
        make_stream("my_streams:two_tasks", validation_fraction=0.2)
    sys.modules.pop("my_streams", None)
