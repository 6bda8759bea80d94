"""The minibatches of Avalanche's replay loaders, sliced from in-memory tensors.

Which rows a PyTorch ``DataLoader`` yields is a function of torch's global
generator: each pass (each iterator) draws a base seed, and a ``RandomSampler``
draws the seed of its permutation when its first row is read. The functions here
make the same draws, at the same moments of a pass, and yield the rows as index
tensors on the training device, each pass's permutation moved there once:

* :func:`replay_rows`: one pass of Avalanche's ``ReplayDataLoader`` (experience
  replay): each step ``batch_size`` rows of the experience, then ``replay_batch_size``
  rows of the memory; the memory starts a new pass whenever it runs out before the
  experience does, its last batch short. With no memory it is one pass of
  the ``DataLoader`` Avalanche trains a strategy from.
* :func:`cycled_rows`: Avalanche's ``DER`` replay, ``cycle(DataLoader(memory,
  shuffle=True, drop_last=True))``, endless full batches.

:class:`ReplayBatches` and :class:`CycledBatches` gather those rows from tensors:
no per-sample ``__getitem__``, no collate, no host-device copy per step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from ckd.distillation.devices import to_device

__all__ = ["CycledBatches", "ReplayBatches", "cycled_rows", "loader_seed", "replay_rows", "sampler_order"]


def loader_seed() -> int:
    """The seed a ``DataLoader`` iterator or a ``RandomSampler`` draws from torch's global generator."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


def sampler_order(n: int, device: torch.device | str | None = None) -> Tensor:
    """One pass of a ``RandomSampler`` over ``n`` rows ``(n,)``, on ``device``: its seed drawn
    from the global generator, the permutation drawn on the CPU as the sampler draws it."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(loader_seed()))
    return to_device(order, "cpu" if device is None else device)


def _n_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def _batch_rows(n: int, batch_size: int, *, shuffle: bool, drop_last: bool, offset: int,
                device: torch.device | str | None) -> Iterator[Tensor]:
    """One pass of a ``BatchSampler`` over a random (``shuffle``) or sequential sampler:
    row indices ``(b,)`` plus ``offset``; the sampler's seed is drawn at the first batch."""
    if shuffle:
        order = sampler_order(n, device)
    else:
        order = torch.arange(n, device=device)
    if offset:
        order = order + offset
    for k in range(_n_batches(n, batch_size, drop_last)):
        yield order[k * batch_size : (k + 1) * batch_size]


def replay_rows(
    n: int,
    m: int,
    batch_size: int,
    replay_batch_size: int,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
    device: torch.device | str | None = None,
) -> Iterator[Tensor]:
    """One pass (epoch) of Avalanche's ``ReplayDataLoader`` over ``n`` experience rows and
    ``m`` memory rows (one group each, no task balancing): per step, its rows ``(b_k,)`` of
    ``cat(experience, memory)``, the experience's first.

    Draws as that loader does: the iterator's seed when the pass starts, then at the
    first step the experience's sampler seed and the memory's, and a memory seed at
    each step that starts a new pass over the memory. ``drop_last`` applies to both.
    """
    loader_seed()
    if _n_batches(n, batch_size, drop_last) == 0:
        return
    settings = dict(shuffle=shuffle, drop_last=drop_last, device=device)
    memory_batches = _n_batches(m, replay_batch_size, drop_last)
    memory = _batch_rows(m, replay_batch_size, offset=n, **settings) if memory_batches else None
    for rows in _batch_rows(n, batch_size, offset=0, **settings):
        if memory is None:
            yield rows
            continue
        replayed = next(memory, None)
        if replayed is None:  # the memory ran out: a new pass
            memory = _batch_rows(m, replay_batch_size, offset=n, **settings)
            replayed = next(memory)
        yield torch.cat([rows, replayed])


def cycled_rows(m: int, batch_size: int, *, device: torch.device | str | None = None) -> Iterator[Tensor]:
    """Avalanche's ``DER`` replay over ``m`` memory rows: endless passes of a shuffled
    ``DataLoader`` with ``drop_last``, each drawing its iterator's seed and its sampler's."""
    if m < batch_size:
        raise ValueError(f"a cycled replay of batch_size={batch_size} needs as many memory rows, got {m}")

    def passes() -> Iterator[Tensor]:
        while True:
            loader_seed()
            yield from _batch_rows(m, batch_size, shuffle=True, drop_last=True, offset=0, device=device)

    return passes()


class ReplayBatches:
    """Minibatches ``[x (b, ...), y (b,), task (b,)]`` of Avalanche's ``ReplayDataLoader``
    over an experience's rows ``data`` and a memory's ``memory`` (``None``: the plain
    ``DataLoader`` Avalanche trains from), gathered from those tensors (on the training
    device) in the loader's order (:func:`replay_rows`), every pass a new order."""

    def __init__(
        self,
        data: Sequence[Tensor],
        memory: Sequence[Tensor] | None = None,
        *,
        batch_size: int,
        replay_batch_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        if not data[0].shape[0] == data[1].shape[0] == data[2].shape[0]:
            raise ValueError(f"x, y and task must have the same length, got {[t.shape[0] for t in data]}")
        for name, value in (("batch_size", batch_size), ("replay_batch_size", replay_batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.n = data[0].shape[0]
        self.m = 0 if memory is None else memory[0].shape[0]
        self.rows = tuple(data) if memory is None else tuple(torch.cat([d, r]) for d, r in zip(data, memory))
        self.batch_size = batch_size
        self.replay_batch_size = replay_batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __len__(self) -> int:
        return _n_batches(self.n, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[list[Tensor]]:
        x, y, task = self.rows
        for index in replay_rows(self.n, self.m, self.batch_size, self.replay_batch_size, shuffle=self.shuffle,
                                 drop_last=self.drop_last, device=x.device):
            yield [x.index_select(0, index), y.index_select(0, index), task.index_select(0, index)]


class CycledBatches:
    """Avalanche's ``DER`` replay as an endless iterator over a memory's tensors
    ``rows`` (``x, y, task, logits``, on the training device): ``next`` gives each
    tensor's ``batch_size`` rows of the next step, in the order of :func:`cycled_rows`."""

    def __init__(self, rows: Sequence[Tensor], batch_size: int) -> None:
        if len({t.shape[0] for t in rows}) != 1:
            raise ValueError(f"the memory's tensors must have the same length, got {[t.shape[0] for t in rows]}")
        self.rows = tuple(rows)
        self._index = cycled_rows(self.rows[0].shape[0], batch_size, device=self.rows[0].device)

    def __iter__(self) -> "CycledBatches":
        return self

    def __next__(self) -> list[Tensor]:
        index = next(self._index)
        return [t.index_select(0, index) for t in self.rows]
