import os
from pathlib import Path

import pytest

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The data root from CKD_DATA_ROOT; tests that need MNIST skip without it."""
    root = os.environ.get("CKD_DATA_ROOT")
    if not root or not all((Path(root) / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES):
        pytest.skip("MNIST not found: set CKD_DATA_ROOT to a folder holding MNIST/raw/*.gz")
    return Path(root)


@pytest.fixture(scope="session")
def local_ray() -> str:
    """One local Ray instance with 2 CPUs for the Ray tests, its address: schedulers in
    this process use it and leave it running; a driver in another process joins it."""
    ray = pytest.importorskip("ray")
    context = ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield context.address_info["gcs_address"]
    ray.shutdown()
