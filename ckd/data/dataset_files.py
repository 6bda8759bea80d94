"""Where the datasets' files lie under the data root, their MD5 sums, and the message that says how to get them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ckd.common.files import md5sum as _md5

__all__ = ["DATA_ROOT_ENV", "LAYOUTS", "DatasetNotFoundError", "checked_file", "missing_files_message", "resolve_data_root"]


DATA_ROOT_ENV = "CKD_DATA_ROOT"


IDX_FILES = {
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


CIFAR10_JPEG = "CIFAR10-JPEG/cifar10-jpeg.tar.gz"


CIFAR10_JPEG_MD5 = "82072a447fb69db2d9437e04b70ccaa1"


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


LAYOUTS = {
    dataset: _Layout(dataset, f"{dataset}/raw", md5, _torchvision_hint("gzipped IDX files", dataset, f"{dataset}/"))
    for dataset, md5 in _MD5.items()
}


LAYOUTS["CIFAR10"] = _Layout(
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
    + f" Or put the JPEG copy of CIFAR-10 at <data root>/{CIFAR10_JPEG} (md5 {CIFAR10_JPEG_MD5}).",
)


LAYOUTS["CIFAR100"] = _Layout(
    "CIFAR-100",
    "cifar-100-python",
    {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
    _torchvision_hint("python-version files (cifar-100-python.tar.gz, unpacked)", "CIFAR100", "cifar-100-python/"),
)


LAYOUTS["TinyImageNet"] = _Layout(
    "Tiny ImageNet",
    "tiny-imagenet-200",
    {"wnids.txt": "", "train/<wnid>/images/*.JPEG": "", "val/images/*.JPEG": "", "val/val_annotations.txt": ""},
    "Unzip the official tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) in the data "
    f"root, or point ckd at the folder that contains tiny-imagenet-200/ with --data-root or the {DATA_ROOT_ENV} "
    "environment variable.",
)


TINYIMAGENET_ZIP_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing or corrupt under the data root."""


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


def missing_files_message(root: Path, dataset: str, problem: str) -> str:
    layout = LAYOUTS[dataset]
    folder = root / layout.folder
    files = "\n".join(f"  {folder / name}" + (f"  (md5 {md5})" if md5 else "") for name, md5 in layout.md5.items())
    return (
        f"{layout.name} not usable under data root {root}: {problem}.\n"
        f"Expected these files (<data root>/{layout.folder}/):\n{files}\n{layout.how_to_get}"
    )


def checked_file(root: Path, dataset: str, name: str, checksum: bool) -> Path:
    """``<root>/<layout folder>/<name>``, present and (with ``checksum``) with its MD5."""
    path = root / LAYOUTS[dataset].folder / name
    if not path.is_file():
        raise DatasetNotFoundError(missing_files_message(root, dataset, f"{path} is missing"))
    expected = LAYOUTS[dataset].md5[name]
    if checksum and expected:
        got = _md5(path)
        if got != expected:
            problem = f"{path} is corrupt (md5 {got}, expected {expected}; --no-checksum accepts re-packed copies)"
            raise DatasetNotFoundError(missing_files_message(root, dataset, problem))
    return path
