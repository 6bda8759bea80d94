"""What a user's own Avalanche script builds around ckd's plugins: a benchmark from Avalanche's
public API over ``(x, y)`` samples (or ckd's split-digits as an Avalanche benchmark), and a
plain ``Naive`` strategy."""

from __future__ import annotations

import functools

import torch
from avalanche.benchmarks import benchmark_from_datasets, with_classes_timeline
from avalanche.benchmarks.utils import as_classification_dataset
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from torch import nn
from torch.utils.data import TensorDataset

from ckd.data.models import mlp
from ckd.data.streams import make_stream

N_FEATURES, N_CLASSES = 6, 6


def blobs(n: int, classes: list[int], seed: int = 0):
    """``n`` samples ``(x, y)`` of Gaussian blobs around the one-hot centres of ``classes``."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(classes).repeat(n // len(classes))
    x = torch.randn(len(y), N_FEATURES, generator=g) + 3 * nn.functional.one_hot(y, N_FEATURES).float()
    data = TensorDataset(x, y)
    data.targets = y.tolist()
    return as_classification_dataset(data)


def three_experiences(empty_second: bool = False):
    """Classes {0, 1}, {2, 3}, {4, 5}; ``empty_second``: the second experience has no sample."""
    second = blobs(80, [2, 3], 1)
    if empty_second:
        second = second.subset([])
    train = [blobs(80, [0, 1]), second, blobs(80, [4, 5], 4)]
    test = [blobs(20, [0, 1], 2), blobs(20, [2, 3], 3), blobs(20, [4, 5], 5)]
    return with_classes_timeline(benchmark_from_datasets(train=train, test=test))


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_FEATURES, 32), nn.ReLU(), nn.Linear(32, N_CLASSES))


@functools.cache
def split_digits():
    """ckd's split-digits (8×8 digits, five experiences of two classes) as the Avalanche benchmark a script trains on."""
    return make_stream("split-digits").benchmark


def digits_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return mlp((1, 8, 8), 10)


def naive(model: nn.Module, plugins: list, metrics: tuple = (), epochs: int = 1) -> Naive:
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=nn.CrossEntropyLoss(),
                 train_mb_size=16, train_epochs=epochs, eval_mb_size=64, plugins=plugins,
                 evaluator=EvaluationPlugin(*metrics, loggers=[]))
