"""An experience's training data as rows of in-memory tensors, when it is plain tensor rows, and the
seeded minibatches sliced from them."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from avalanche.benchmarks.utils.flat_data import FlatData
from torch import Tensor
from torch.utils.data import default_collate

__all__ = ["SourceCache", "TensorBatches", "dataset_tensors", "permutation_seed"]


SourceCache = dict[int, tuple[Any, tuple[Tensor, ...]]]  # id(source): (source, its tensors)


class TensorBatches:
    """Minibatches ``[x (b, ...), y (b,), task (b,)]`` of in-memory tensors.

    ``task`` is ``(N,)`` task labels, or one label (an ``int``) for every row, whose
    minibatch column is then a view of a constant tensor (no gather).

    Each pass (epoch) slices a fresh permutation of the rows, drawn on the tensors'
    device with ``generator`` (``shuffle=False``: the rows in order, as views), and
    draws one number from torch's global generator, as a DataLoader's iterator does.
    No per-sample indexing, no collate, no host-device sync.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        task: Tensor | int,
        *,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if isinstance(task, int):
            task = torch.full_like(y, task)
            self._task_column: Tensor | None = task[: batch_size]
        else:
            self._task_column = None
        if not x.shape[0] == y.shape[0] == task.shape[0]:
            raise ValueError(f"x, y and task must have the same length, got {x.shape[0]}, {y.shape[0]}, {task.shape[0]}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if shuffle and generator is None:
            raise ValueError("shuffle=True needs a generator on the tensors' device (see permutation_seed)")
        self.x, self.y, self.task = x, y, task
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator

    def __len__(self) -> int:
        n, b = self.x.shape[0], self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def order(self) -> Tensor | None:
        """The next pass's row order ``(N,)`` on the tensors' device (``None``: in order)."""
        if not self.shuffle:
            return None
        return torch.randperm(self.x.shape[0], generator=self.generator, device=self.x.device)

    def __iter__(self) -> Iterator[list[Tensor]]:
        # A DataLoader's iterator draws its base seed from the global generator; so
        # does each pass here, so that what draws after it (a reservoir buffer, DER's
        # replay loader) sees the same random stream on both paths.
        torch.empty((), dtype=torch.int64).random_()
        order = self.order()
        b = self.batch_size
        for k in range(len(self)):
            if order is None:
                rows = slice(k * b, (k + 1) * b)
                yield [self.x[rows], self.y[rows], self.task[rows]]
            else:
                index = order[k * b : (k + 1) * b]
                task = self.task.index_select(0, index) if self._task_column is None else self._task_column[: index.shape[0]]
                yield [self.x.index_select(0, index), self.y.index_select(0, index), task]


def permutation_seed() -> int:
    """A seed for an experience's data order, drawn from torch's global (CPU) generator."""
    return int(torch.randint(0, 2**62, (1,)))


def dataset_tensors(dataset: Any, *attributes: str, sources: SourceCache | None = None) -> tuple[Tensor, ...] | None:
    """``(x (N, ...), y (N,), task (N,), *attributes)`` of an Avalanche dataset whose items
    are rows of in-memory tensors, in the dataset's order; ``None`` when they are not.

    The rows come from datasets with an ``as_tensors() -> (x, y)`` method (ckd's
    streams); the dataset may be subsets and concatenations of them, with no
    transform and no item attribute other than its task labels and ``attributes``
    (each held as tensors or lists of rows, as DER's ``logits``), and one task label
    (Avalanche loads several task labels task-balanced).

    ``sources``: the sources' tensors already read, by identity, shared between calls
    (a source met again is not read again).
    """
    flat = getattr(dataset, "_flat_data", None)
    data_attributes = getattr(dataset, "_data_attributes", None)
    if not isinstance(flat, FlatData) or data_attributes is None:
        return None
    if any(a.use_in_getitem and name not in ("targets_task_labels", *attributes) for name, a in data_attributes.items()):
        return None
    tasks = getattr(dataset, "targets_task_labels", None)
    if tasks is None or len(tasks.uniques) != 1 or any(name not in data_attributes for name in attributes):
        return None
    leaves = {} if sources is None else sources
    group = getattr(getattr(flat, "_transform_groups", None), "current_group", "train")
    rows = _flat_rows(flat, None, lambda s, index: _source_rows(s, index, leaves), group)
    if rows is None:
        return None
    x, y = rows
    extra = []
    for name in attributes:
        values = _flat_rows(data_attributes[name].data, None, _attribute_rows, group)
        if values is None or values[0].shape[0] != x.shape[0]:
            return None
        extra.append(values[0])
    return x, y, torch.full_like(y, next(iter(tasks.uniques))), *extra


def _source_rows(source: Any, index: Tensor | None, leaves: SourceCache) -> tuple[Tensor, ...] | None:
    """Rows ``index`` (``None``: all) ``(x, y)`` of a dataset with ``as_tensors()``."""
    if not callable(getattr(source, "as_tensors", None)):
        return None
    read = leaves.get(id(source))
    if read is None or read[0] is not source:
        if index is not None and 16 * index.shape[0] < len(source):
            # A few rows of a large source (a memory's of a past experience): read as a DataLoader reads them.
            return tuple(default_collate([source[i] for i in index.tolist()]))
        read = leaves[id(source)] = (source, tuple(source.as_tensors()))
    tensors = read[1]
    return tensors if index is None else tuple(t.index_select(0, index) for t in tensors)


def _attribute_rows(values: Any, index: Tensor | None) -> tuple[Tensor] | None:
    """Rows ``index`` (``None``: all) of an attribute held as a tensor or a list of rows."""
    if isinstance(values, Tensor):
        return (values if index is None else values.index_select(0, index.to(values.device)),)
    if isinstance(values, list) and values and all(isinstance(v, Tensor) for v in values):
        rows = values if index is None else [values[i] for i in index.tolist()]
        return (torch.stack(rows),)  # Avalanche's DER keeps its logits as a list of rows
    return None


def _has_transform(flat: FlatData, group: str) -> bool:
    for groups in (getattr(flat, "_transform_groups", None), getattr(flat, "_frozen_transform_groups", None)):
        if groups is not None and any(groups.transform_groups.get(g) is not None for g in (group, groups.current_group)):
            return True
    return False


def _flat_rows(data: Any, index: Tensor | None, leaf: Callable[[Any, Tensor | None], tuple[Tensor, ...] | None],
               group: str) -> tuple[Tensor, ...] | None:
    """Rows ``index (K,)`` (``None``: all) of ``data``, a tree of Avalanche ``FlatData``
    (subsets and concatenations) over sources that ``leaf(source, index)`` reads as tensors."""
    if not isinstance(data, FlatData):
        return leaf(data, index)
    if _has_transform(data, group):
        return None
    if data._indices is not None:  # ints, 0-d tensors or Avalanche's lazy sequences of them
        positions = range(len(data._indices)) if index is None else index.tolist()
        index = torch.tensor([int(data._indices[i]) for i in positions], dtype=torch.long)
    sources = data._datasets
    if index is None:
        parts = [_flat_rows(s, None, leaf, group) for s in sources]
        if not parts or any(p is None for p in parts):
            return None
        return parts[0] if len(parts) == 1 else tuple(torch.cat(ts) for ts in zip(*parts))
    if len(sources) == 1:
        return _flat_rows(sources[0], index, leaf, group)
    ends = torch.tensor(data._cumulative_sizes)
    source_of = torch.bucketize(index, ends, right=True)
    out: list[Tensor] | None = None
    for k, source in enumerate(sources):
        at = (source_of == k).nonzero().squeeze(1)
        if at.numel() == 0:
            continue
        start = int(ends[k - 1]) if k else 0
        part = _flat_rows(source, index.index_select(0, at) - start, leaf, group)
        if part is None:
            return None
        if out is None:
            out = [p.new_empty((index.shape[0], *p.shape[1:])) for p in part]
        for o, p in zip(out, part):
            o.index_copy_(0, at.to(o.device), p)
    return tuple(out) if out is not None else None
