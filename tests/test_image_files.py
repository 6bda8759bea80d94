"""Tests for ``ckd.data.image_files`` and the streams built on it: ``split-cifar10`` from the JPEG
copy of CIFAR-10, and ``image-folder:PATH``.

The CIFAR-10 tests read the real archive, ``CIFAR10-JPEG/cifar10-jpeg.tar.gz`` under
``$CKD_DATA_ROOT`` or under ``../shared/datasets`` beside the repository, and only read
it: they work on a slice of it (20 training and 5 test images per class) repacked under
a temporary folder, and skip when it is absent. Every test caches under its own
``$CKD_CACHE_DIR``. Reference pixels come from Pillow, independently of ``ckd``.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import ckd.data.dataset_files as dataset_files
import ckd.data.decoders as decoders
import ckd.data.image_files as image_files
from ckd.benchmarking.run_config import RunConfig
from ckd.benchmarking.runner import run
from ckd.common.files import md5sum
from ckd.data.augmentation import CIFAR10_NORMALIZATION
from ckd.data.dataset_files import DatasetNotFoundError
from ckd.data.image_files import load_image_set
from ckd.data.streams import make_stream

REPO = Path(__file__).resolve().parents[1]
JPEG = "CIFAR10-JPEG/cifar10-jpeg.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SLICE = {"train": 20, "test": 5}


# ------------------------------------------------------------------ helpers


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("CKD_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def real_jpeg() -> Path:
    for root in (os.environ.get("CKD_DATA_ROOT", ""), str(REPO.parent / "shared" / "datasets")):
        if root and (Path(root) / JPEG).is_file():
            return Path(root) / JPEG
    pytest.skip(f"{JPEG} not found under $CKD_DATA_ROOT or ../shared/datasets")


@pytest.fixture(scope="session")
def jpeg_slice(real_jpeg, tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A data root holding a slice of the real archive in its layout, and the slice's
    JPEG bytes by member name. The members are written in reverse order: the loader sorts."""
    members = {}
    with tarfile.open(real_jpeg, "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and int(Path(parts[3]).stem) < SLICE[parts[1]]:
                members[member.name] = tar.extractfile(member).read()
    root = tmp_path_factory.mktemp("jpeg-slice")
    write_tar(root / JPEG, members, reverse=True)
    return root, members


def write_tar(path: Path, members: dict[str, bytes], reverse: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name in sorted(members, reverse=reverse):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            tar.addfile(info, io.BytesIO(members[name]))
    return path


def pillow(data: bytes | Path) -> np.ndarray:
    """``(3, H, W)`` uint8 as Pillow decodes the image, channel-major."""
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1)


def load_all(dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batches = list(DataLoader(dataset, batch_size=512, shuffle=False))
    return tuple(torch.cat([b[k] for b in batches]) for k in range(3))


def as_bytes(stream, x: torch.Tensor) -> np.ndarray:
    """Undo the stream's normalisation: ``x (N, C, H, W)`` back to uint8 (exactly, or the assert fails)."""
    mean = torch.tensor(stream.normalization.mean).view(1, -1, 1, 1)
    std = torch.tensor(stream.normalization.std).view(1, -1, 1, 1)
    values = (x.double() * std + mean) * 255
    assert (values - values.round()).abs().max() < 1e-3
    return values.round().to(torch.uint8).numpy()


def one_line_error(error: pytest.ExceptionInfo, *names: object) -> str:
    message = str(error.value)
    assert "\n" not in message
    for name in names:
        assert str(name) in message
    return message


# ------------------------------------------------------- CIFAR-10 as JPEG


def test_the_real_archive_has_the_published_md5_and_size(real_jpeg):
    assert md5sum(real_jpeg) == dataset_files.CIFAR10_JPEG_MD5 == "82072a447fb69db2d9437e04b70ccaa1"
    assert real_jpeg.stat().st_size == 19_436_979


def test_split_cifar10_reads_the_jpeg_copy(jpeg_slice):
    root, members = jpeg_slice
    stream = make_stream("split-cifar10", data_root=root, checksum=False)
    assert stream.classes_per_experience == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]] and stream.n_classes == 10
    assert stream.input_shape == (3, 32, 32) and stream.scenario == "class-il"
    assert stream.normalization == CIFAR10_NORMALIZATION
    assert stream.augmentation.padding == 4 and stream.augmentation.fill == pytest.approx(CIFAR10_NORMALIZATION.black)
    for i in range(5):
        for split, experience in (("train", stream.benchmark.train_stream[i]), ("test", stream.benchmark.test_stream[i])):
            x, y, task = load_all(experience.dataset)
            n = SLICE[split]
            assert y.tolist() == [2 * i] * n + [2 * i + 1] * n and not task.any()  # labels by class folder, in order
            names = [f"cifar10-jpeg/{split}/{CLASSES[label]}/{k:04d}.jpg" for label in (2 * i, 2 * i + 1) for k in range(n)]
            assert np.array_equal(as_bytes(stream, x), np.stack([pillow(members[name]) for name in names]))
    assert make_stream("split-cifar10", data_root=root, checksum=False, task_labels=True).scenario == "task-il"
    assert stream.data_files == str((root / JPEG).resolve())  # results record which copy they read


def test_jpeg_counts_are_checked_against_what_is_expected(jpeg_slice):
    root, _ = jpeg_slice
    archive = root / JPEG
    image_set = load_image_set(archive, classes=CLASSES, image_size=(32, 32), per_class=(20, 5))
    assert image_set.classes == CLASSES and image_set.train_images.shape == (200, 3, 32, 32)
    with pytest.raises(ValueError) as err:
        load_image_set(archive, classes=CLASSES, per_class=(5000, 1000))
    one_line_error(err, archive, "train/airplane/ holds 20 images, expected 5000 per class")
    with pytest.raises(ValueError, match="class folders airplane automobile"):
        load_image_set(archive, classes=("cat", "dog"))
    with pytest.raises(DatasetNotFoundError, match="corrupt") as err:  # a re-packed slice is not the shared copy
        make_stream("split-cifar10", data_root=root)
    one_line_error(err, archive, "--no-checksum")


def test_corrupt_copies_are_refused_in_one_line(real_jpeg, jpeg_slice, tmp_path):
    copy = tmp_path / "root" / JPEG
    copy.parent.mkdir(parents=True)
    data = bytearray(real_jpeg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(DatasetNotFoundError, match="md5") as err:
        make_stream("split-cifar10", data_root=tmp_path / "root")
    one_line_error(err, copy)
    copy.write_bytes(real_jpeg.read_bytes()[: len(data) // 2])
    with pytest.raises(DatasetNotFoundError, match="md5") as err:
        make_stream("split-cifar10", data_root=tmp_path / "root")
    one_line_error(err, copy)
    sliced = (jpeg_slice[0] / JPEG).read_bytes()
    flipped_crc = sliced[:-6] + bytes([sliced[-6] ^ 0xFF]) + sliced[-5:]
    for broken in (sliced[: len(sliced) // 2], sliced[:-3], flipped_crc):  # the last two decompress in full
        copy.write_bytes(broken)
        decoders._decoded.clear()
        with pytest.raises(DatasetNotFoundError, match="not a readable tar archive") as err:
            make_stream("split-cifar10", data_root=tmp_path / "root", checksum=False)
        one_line_error(err, copy)
    assert not (tmp_path / "cache").exists()  # nothing cached from a failed decode


def test_missing_cifar10_names_both_copies(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        make_stream("split-cifar10", data_root=tmp_path)
    for path in (tmp_path / JPEG, tmp_path / "cifar-10-batches-py" / "data_batch_1"):
        assert str(path) in str(err.value)


def test_torchvision_batches_are_preferred_to_the_jpeg_copy(jpeg_slice, tmp_path):
    from archives import write_cifar10

    (tmp_path / JPEG).parent.mkdir(parents=True)
    shutil.copyfile(jpeg_slice[0] / JPEG, tmp_path / JPEG)
    write_cifar10(tmp_path, train_per_class=3, test_per_class=2)
    stream = make_stream("split-cifar10", data_root=tmp_path, checksum=False)
    x, _, _ = stream.test_tensors(0)
    assert x.shape == (4, 3, 32, 32)  # 2 test images per class: the batches', not the 5 of the JPEG slice
    assert stream.data_files == str((tmp_path / "cifar-10-batches-py").resolve())


def test_an_image_of_the_wrong_size_is_refused(tmp_path, cache_dir):
    members = {}
    for split in ("train", "test"):
        for label in CLASSES:
            members[f"cifar10-jpeg/{split}/{label}/0000.png"] = png(np.zeros((32, 32, 3), np.uint8))
    members["cifar10-jpeg/train/cat/0001.png"] = png(np.zeros((16, 16, 3), np.uint8))
    write_tar(tmp_path / JPEG, members)
    with pytest.raises(DatasetNotFoundError) as err:
        make_stream("split-cifar10", data_root=tmp_path, checksum=False)
    one_line_error(err, "cifar10-jpeg/train/cat/0001.png", tmp_path / JPEG, "16x16 pixels, expected 32x32")
    assert not cache_dir.exists()


# ------------------------------------------------------------------ cache


def test_the_second_load_reads_the_disk_cache(jpeg_slice, cache_dir, monkeypatch):
    root, _ = jpeg_slice
    archive = root / JPEG
    first = make_stream("split-cifar10", data_root=root, checksum=False)
    fingerprint = f"{md5sum(archive)}-{archive.stat().st_size}"
    assert [p.name for p in cache_dir.iterdir()] == [f"cifar10-jpeg.tar.gz.{fingerprint}.v1.npz"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(image_files, "_decode", no_decoding)
    monkeypatch.setattr(image_files, "_archive_entries", no_decoding)
    decoders._decoded.clear()  # as in a new process
    second = make_stream("split-cifar10", data_root=root, checksum=False)
    for i in range(5):
        assert all(torch.equal(a, b) for a, b in zip(first.test_tensors(i), second.test_tensors(i)))
    changed = root.parent / "changed" / JPEG  # another archive, named the same: its own cache
    changed.parent.mkdir(parents=True)
    data = archive.read_bytes()
    changed.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(AssertionError, match="decoded again"):
        load_image_set(changed)


def test_the_cache_goes_beside_the_archive_else_to_the_user_cache(jpeg_slice, tmp_path, monkeypatch):
    monkeypatch.delenv("CKD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    shared = tmp_path / "shared" / "cifar10-jpeg.tar.gz"
    shared.parent.mkdir()
    shutil.copyfile(jpeg_slice[0] / JPEG, shared)
    load_image_set(shared)
    assert len(list(shared.parent.glob("cifar10-jpeg.tar.gz.*.v1.npz"))) == 1
    read_only = tmp_path / "read-only" / "cifar10-jpeg.tar.gz"
    read_only.parent.mkdir()
    shutil.copyfile(shared, read_only)
    read_only.parent.chmod(0o555)
    try:
        load_image_set(read_only)
        assert sorted(p.name for p in read_only.parent.iterdir()) == ["cifar10-jpeg.tar.gz"]
    finally:
        read_only.parent.chmod(0o755)
    assert len(list((tmp_path / "xdg" / "ckd").glob("cifar10-jpeg.tar.gz.*.v1.npz"))) == 1


def test_a_failed_cache_write_leaves_no_file(jpeg_slice, cache_dir, monkeypatch):
    archive = jpeg_slice[0] / JPEG

    def write_part(error):
        def savez(f, **arrays):
            f.write(b"PK\3\4 partial")
            raise error

        return savez

    monkeypatch.setattr(np, "savez", write_part(OSError(28, "No space left on device")))
    with pytest.warns(UserWarning, match="No space left"):
        assert load_image_set(archive).train_images.shape == (200, 3, 32, 32)  # the data, without a cache
    assert list(cache_dir.iterdir()) == []
    monkeypatch.setattr(np, "savez", write_part(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        load_image_set(archive)
    assert list(cache_dir.iterdir()) == []


def test_an_unreadable_cache_is_decoded_again(jpeg_slice, cache_dir):
    archive = jpeg_slice[0] / JPEG
    reference = load_image_set(archive)
    (cache_file,) = cache_dir.iterdir()
    cache_file.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="unreadable cache"):
        again = load_image_set(archive)
    assert np.array_equal(again.test_images, reference.test_images)
    assert np.load(cache_file)["test_images"].shape == (50, 3, 32, 32)  # rewritten


# ------------------------------------------------------------ image folders


def png(pixels: np.ndarray, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels, mode).save(out, format="PNG")
    return out.getvalue()


def write_folder(root: Path, classes=("dog", "ant", "cat", "bee"), n=(3, 2), size=(8, 6), seed=0) -> dict[str, np.ndarray]:
    """``root/train/<class>/img<k>.png`` and ``root/test/...``: seeded noise; ``(3, H, W)`` pixels by relative path."""
    rng = np.random.default_rng(seed)
    width, height = size
    written = {}
    for split, count in zip(("train", "test"), n):
        for label in classes:
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for k in range(count):
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                (root / split / label / f"img{k}.png").write_bytes(png(pixels))
                written[f"{split}/{label}/img{k}.png"] = pixels.transpose(2, 0, 1)
    return written


def test_image_folder_stream(tmp_path):
    root = tmp_path / "pets"
    written = write_folder(root)
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    (root / "train" / "ant" / ".hidden.png").write_bytes(b"skipped")
    stream = make_stream(f"image-folder:{root}")
    assert stream.name == f"image-folder:{root}" and stream.scenario == "class-il"
    assert stream.classes_per_experience == [[0, 1], [2, 3]] and stream.n_classes == 4
    assert stream.input_shape == (3, 6, 8) and stream.augmentation is None
    train = np.stack([written[f"train/{c}/img{k}.png"] for c in ("ant", "bee", "cat", "dog") for k in range(3)])
    assert stream.normalization.mean == pytest.approx(tuple(train.mean(axis=(0, 2, 3)) / 255))
    assert stream.normalization.std == pytest.approx(tuple(train.std(axis=(0, 2, 3)) / 255))
    x, y, _ = load_all(stream.benchmark.train_stream[1].dataset)
    assert y.tolist() == [2, 2, 2, 3, 3, 3]  # classes sorted by name: cat, dog
    assert np.array_equal(as_bytes(stream, x), train[6:])
    x, y, _ = stream.test_tensors(0)
    expected = np.stack([written[f"test/{c}/img{k}.png"] for c in ("ant", "bee") for k in range(2)])
    assert y.tolist() == [0, 0, 1, 1] and np.array_equal(as_bytes(stream, x), expected)
    assert make_stream(f"image-folder:{root}", n_experiences=4).classes_per_experience == [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match="divide 4"):
        make_stream(f"image-folder:{root}", n_experiences=3)


def test_image_folder_mixed_formats_and_modes(tmp_path):
    root = tmp_path / "mixed"
    write_folder(root, classes=("a", "b"), n=(1, 1))
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    (root / "train" / "a" / "img1.png").write_bytes(png(gray, "L"))
    Image.fromarray(np.full((6, 8, 3), 200, np.uint8)).save(root / "train" / "b" / "img1.jpg", quality=90)
    image_set = load_image_set(root)
    assert image_set.train_labels.tolist() == [0, 0, 1, 1]
    assert np.array_equal(image_set.train_images[1], np.stack([gray] * 3))  # grayscale converted to RGB
    assert np.array_equal(image_set.train_images[3], pillow(root / "train" / "b" / "img1.jpg"))


def test_image_folder_in_a_tar_archive_reads_the_same(tmp_path):
    root = tmp_path / "pets"
    write_folder(root)
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="pets")
    from_folder = make_stream(f"image-folder:{root}").test_tensors(1)
    from_archive = make_stream(f"image-folder:{archive}").test_tensors(1)
    assert all(torch.equal(a, b) for a, b in zip(from_folder, from_archive))


def test_image_folder_with_an_odd_number_of_classes_needs_n_experiences(tmp_path):
    write_folder(tmp_path / "three", classes=("a", "b", "c"))
    with pytest.raises(ValueError, match="3 classes, not 2 per experience: give n_experiences"):
        make_stream(f"image-folder:{tmp_path / 'three'}")
    assert make_stream(f"image-folder:{tmp_path / 'three'}", n_experiences=3).n_experiences == 3


def test_image_folder_refusals_name_the_file(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as err:
        make_stream(f"image-folder:{missing}")
    one_line_error(err, missing, "train/<class>/<image>")
    cases = {
        "no-test": (lambda r: shutil.rmtree(r / "test"), "has no test/ folder"),
        "one-sided": (lambda r: shutil.rmtree(r / "test" / "cat"), "no images in test/cat/"),
        "sizes": (lambda r: (r / "train" / "bee" / "img1.png").write_bytes(png(np.zeros((7, 8, 3), np.uint8))),
                  "bee/img1.png is 8x7 pixels, expected 8x6 like"),
        "unreadable": (lambda r: (r / "test" / "dog" / "img0.png").write_bytes(b"\x89PNG broken"),
                       "dog/img0.png is not a readable image"),
    }
    for name, (damage, problem) in cases.items():
        root = tmp_path / name
        write_folder(root)
        damage(root)
        with pytest.raises(DatasetNotFoundError) as err:
            make_stream(f"image-folder:{root}")
        one_line_error(err, root, problem)
    assert not (tmp_path / "cache").exists()


def test_image_folder_cache_follows_the_files(tmp_path):
    root = tmp_path / "pets"
    write_folder(root)
    first = make_stream(f"image-folder:{root}").test_tensors(0)
    image = root / "test" / "ant" / "img0.png"
    image.write_bytes(png(np.zeros((6, 8, 3), np.uint8)))
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    decoders._decoded.clear()
    second = make_stream(f"image-folder:{root}").test_tensors(0)
    assert not torch.equal(first[0][0], second[0][0]) and torch.equal(first[0][1:], second[0][1:])
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_given_class_order_relabels(tmp_path):
    written = write_folder(tmp_path / "ab", classes=("a", "b"), n=(2, 1))
    image_set = load_image_set(tmp_path / "ab", classes=("b", "a"))
    assert image_set.classes == ("b", "a") and image_set.train_labels.tolist() == [0, 0, 1, 1]
    assert np.array_equal(image_set.train_images[0], written["train/b/img0.png"])


def test_image_folder_names_are_not_user_functions(tmp_path):
    with pytest.raises(ValueError, match="image-folder:PATH"):
        make_stream("no-such-stream")
    with pytest.raises(DatasetNotFoundError):  # not an import error: the name is read as a path
        make_stream("image-folder:os:path")


def test_image_folder_runs_like_any_stream(tmp_path):
    root = tmp_path / "pets"
    write_folder(root, n=(6, 2))
    with pytest.raises(ValueError, match="give epochs, lr, batch_size"):
        RunConfig(stream=f"image-folder:{root}", method="naive")
    config = RunConfig(
        stream=f"image-folder:{root}", method="replay", epochs=1, lr=0.05, batch_size=4,
        max_train_per_experience=8, method_args={"mem_size": 8},
    )
    result = run(config)
    assert result["stream"] == f"image-folder:{root}"
    assert np.array(result["accuracy_matrix"]).shape == (2, 2)
