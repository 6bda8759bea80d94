"""A tensor-native training path that stays an Avalanche strategy.

Avalanche trains from a ``DataLoader`` over its dataset: one ``__getitem__`` and
a collate per sample, a quarter of a Seq-MNIST step on the CPU. When an
experience's data are rows of in-memory tensors, :class:`TensorTraining` instead
slices minibatches out of those tensors, moved once to the training device, with
a seeded permutation drawn on that device (:class:`TensorBatches`). It also calls
each training-loop hook only on the plugins that implement it, and never on the
evaluator: no evaluation callbacks run while training (``strategy.eval`` is
unchanged). Everything else is Avalanche's: plugins see the same ``mbatch``,
``mb_output`` and ``loss``, in the same order, so every plugin works unchanged.

A dataset that is not plain tensor rows (a transform, an extra attribute in its
items, several task labels, whose task-balanced loading differs) and a plugin
that replaces ``strategy.dataloader`` (Avalanche's ``ReplayPlugin``) keep
Avalanche's loader.

Data order: the permutation's seed is drawn from torch's global generator when
an experience starts, so a run seeded with ``torch.manual_seed`` repeats its
orders; with ``strategy.train(experience, shuffle=False)`` both paths see the
same batches and give the same numbers.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from avalanche.core import BasePlugin, BaseSGDPlugin, SupervisedPlugin
from avalanche.training import DER, JointTraining, Naive
from avalanche.training.templates import BaseSGDTemplate
from torch import Tensor

__all__ = [
    "TensorBatches",
    "TensorDER",
    "TensorJointTraining",
    "TensorNaive",
    "TensorTraining",
    "dataset_tensors",
    "permutation_seed",
]

_NO_OP_BASES = (BasePlugin, BaseSGDPlugin, SupervisedPlugin)
_LOOP_EVENTS = (
    "before_training_epoch", "after_training_epoch",
    "before_training_iteration", "before_forward", "after_forward", "before_backward",
    "after_backward", "before_update", "after_update", "after_training_iteration",
)


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


def dataset_tensors(dataset: Any) -> tuple[Tensor, Tensor, Tensor] | None:
    """``(x (N, ...), y (N,), task (N,))`` of an Avalanche dataset whose items are rows of
    in-memory tensors, in the dataset's order; ``None`` when they are not.

    The rows come from datasets with an ``as_tensors() -> (x, y)`` method (ckd's
    streams); the dataset may be a subset or a concatenation of them, with no
    transform and no item attribute other than its task labels, of which there
    must be one (Avalanche loads several task labels task-balanced).
    """
    flat = getattr(dataset, "_flat_data", None)
    attributes = getattr(dataset, "_data_attributes", None)
    if flat is None or attributes is None:
        return None
    sources = getattr(flat, "_datasets", [])
    if not sources or not all(callable(getattr(s, "as_tensors", None)) for s in sources):
        return None
    for groups in (flat._transform_groups, flat._frozen_transform_groups):
        if groups is not None and groups.transform_groups.get(groups.current_group) is not None:
            return None
    if any(a.use_in_getitem and name != "targets_task_labels" for name, a in attributes.items()):
        return None
    tasks = getattr(dataset, "targets_task_labels", None)
    if tasks is None or len(tasks.uniques) != 1:
        return None
    parts = [s.as_tensors() for s in sources]
    x = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    if flat._indices is not None:
        index = torch.as_tensor(flat._indices, dtype=torch.long)
        x, y = x.index_select(0, index), y.index_select(0, index)
    task = torch.full_like(y, next(iter(tasks.uniques)))
    return x, y, task


def _implements(plugin: object, event: str) -> bool:
    """Whether ``plugin`` does something at ``event`` (not Avalanche's no-op default)."""
    cls = type(plugin)
    if event in vars(plugin) or cls.__getattribute__ is not object.__getattribute__ or hasattr(cls, "__getattr__"):
        return True  # set on the instance, or looked up dynamically: call it
    hook = getattr(type(plugin), event, None)
    if hook is None:
        return False
    return not any(hook is getattr(base, event, None) for base in _NO_OP_BASES)


class TensorTraining(BaseSGDTemplate):
    """Mixin for an Avalanche SGD strategy: batches from in-memory tensors and a
    training loop that calls only the plugins that implement each hook.

    Put it after the strategy class (``class S(Naive, TensorTraining)``): it then
    sits just above ``BaseSGDTemplate``, so a strategy's own overrides (DER's
    ``_before_forward``) still run before the plugins' hooks.
    """

    _loop_hooks: dict[str, list[Callable]] | None = None

    def make_train_dataloader(
        self, num_workers=0, shuffle=True, pin_memory=None, persistent_workers=False, drop_last=False, **kwargs
    ):
        tensors = dataset_tensors(self.adapted_dataset)
        if tensors is None:
            return super().make_train_dataloader(
                num_workers=num_workers, shuffle=shuffle, pin_memory=pin_memory,
                persistent_workers=persistent_workers, drop_last=drop_last, **kwargs,
            )
        x, y, task = (t.to(self.device) for t in tensors)
        task = int(task[0]) if task.numel() else 0  # one task label (dataset_tensors): a constant column
        generator = None
        if shuffle:
            generator = torch.Generator(device=self.device).manual_seed(permutation_seed())
        self.dataloader = TensorBatches(
            x, y, task, batch_size=self.train_mb_size, shuffle=shuffle, drop_last=drop_last, generator=generator
        )

    def _make_empty_loss(self) -> Tensor:
        # A scalar, not Avalanche's shape (1,): each term added to it then needs no
        # reduction back to (1,) in the backward pass. Same values, same gradients.
        return torch.zeros((), device=self.device)

    def _collect_loop_hooks(self) -> None:
        plugins = [p for p in self.plugins if p is not self.evaluator]
        self._loop_hooks = {
            event: [getattr(p, event) for p in plugins if _implements(p, event)] for event in _LOOP_EVENTS
        }

    def _trigger(self, event: str, **kwargs) -> None:
        if self._loop_hooks is None:  # a training_epoch that skipped _before_training_epoch
            self._collect_loop_hooks()
        for hook in self._loop_hooks[event]:
            hook(self, **kwargs)

    # The plugin list is read again at the start of every epoch.
    def _before_training_epoch(self, **kwargs):
        self._collect_loop_hooks()
        self._trigger("before_training_epoch", **kwargs)

    def _after_training_epoch(self, **kwargs):
        self._trigger("after_training_epoch", **kwargs)

    def _before_training_iteration(self, **kwargs):
        self._trigger("before_training_iteration", **kwargs)

    def _before_forward(self, **kwargs):
        self._trigger("before_forward", **kwargs)

    def _after_forward(self, **kwargs):
        self._trigger("after_forward", **kwargs)

    def _before_backward(self, **kwargs):
        self._trigger("before_backward", **kwargs)

    def _after_backward(self, **kwargs):
        self._trigger("after_backward", **kwargs)

    def _before_update(self, **kwargs):
        self._trigger("before_update", **kwargs)

    def _after_update(self, **kwargs):
        self._trigger("after_update", **kwargs)

    def _after_training_iteration(self, **kwargs):
        self._trigger("after_training_iteration", **kwargs)

    def _train_cleanup(self):
        super()._train_cleanup()
        self._loop_hooks = None  # bound methods of the plugins: rebuilt next epoch


class TensorNaive(Naive, TensorTraining):
    """Avalanche's ``Naive`` (plugins do the rest) on the tensor-native path."""


class TensorDER(DER, TensorTraining):
    """Avalanche's ``DER`` on the tensor-native path (its replay loader is its own)."""


class TensorJointTraining(JointTraining, TensorTraining):
    """Avalanche's ``JointTraining`` on the tensor-native path."""
