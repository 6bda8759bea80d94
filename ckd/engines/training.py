"""A tensor-native training path that stays an Avalanche strategy.

Avalanche trains from a ``DataLoader`` over its dataset: one ``__getitem__`` and
a collate per sample, a quarter of a Seq-MNIST step on the CPU. When an
experience's data are rows of in-memory tensors, :class:`TensorTraining` instead
slices minibatches out of those tensors, moved once to the training device, with
a seeded permutation drawn on that device (:class:`TensorBatches`). It also calls
each training-loop hook only on the plugins that implement it, and on the
evaluator only when it has metrics or loggers to feed (the training curves of
Avalanche's loggers; ``strategy.eval`` is unchanged). Everything else is
Avalanche's: plugins see the same ``mbatch``,
``mb_output`` and ``loss``, in the same order, so every plugin works unchanged.

A dataset that is not plain tensor rows (a transform, an extra attribute in its
items, several task labels, whose task-balanced loading differs) keeps
Avalanche's loader, and so does a plugin's loader other than Avalanche's replay
loader.

Data order: the permutation's seed is drawn from torch's global generator when
an experience starts, so a run seeded with ``torch.manual_seed`` repeats its
orders; with ``strategy.train(experience, shuffle=False)`` both paths see the
same batches and give the same numbers.

The replay baselines train in Avalanche's own order instead, so that they give
the numbers of ``loader="avalanche"``: a strategy with Avalanche's
``ReplayPlugin`` (whose ``ReplayDataLoader`` is swapped for the same minibatches
gathered from tensors, :class:`ckd.engines.tensor_replay.ReplayBatches`) and
:class:`TensorDER` (whose buffer's rows and logits are replayed from tensors on
the device, :class:`ckd.engines.tensor_replay.CycledBatches`) draw each pass's order as
Avalanche's ``DataLoader`` draws it, from torch's global generator.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

import torch
from avalanche.benchmarks.utils import make_avalanche_dataset
from avalanche.benchmarks.utils.data_attribute import TensorDataAttribute
from avalanche.benchmarks.utils.data_loader import ReplayDataLoader
from avalanche.benchmarks.utils.flat_data import FlatData
from avalanche.core import BasePlugin, BaseSGDPlugin, SupervisedPlugin
from avalanche.training import DER, JointTraining, Naive
from avalanche.training.plugins import ReplayPlugin
from avalanche.training.storage_policy import ReservoirSamplingBuffer
from avalanche.training.supervised.der import ClassBalancedBufferWithLogits
from avalanche.training.templates import BaseSGDTemplate
from torch import Tensor

from ckd.engines.tensor_data import SourceCache, TensorBatches, dataset_tensors, permutation_seed
from ckd.engines.tensor_replay import CycledBatches, ReplayBatches, loader_seed

__all__ = ["TensorDER", "TensorJointTraining", "TensorLogitBuffer", "TensorNaive", "TensorTraining"]


_NO_OP_BASES = (BasePlugin, BaseSGDPlugin, SupervisedPlugin)


_LOOP_EVENTS = (
    "before_training_epoch", "after_training_epoch",
    "before_training_iteration", "before_forward", "after_forward", "before_backward",
    "after_backward", "before_update", "after_update", "after_training_iteration",
)


def _implements(plugin: object, event: str) -> bool:
    """Whether ``plugin`` does something at ``event`` (not Avalanche's no-op default)."""
    cls = type(plugin)
    if event in vars(plugin) or cls.__getattribute__ is not object.__getattribute__ or hasattr(cls, "__getattr__"):
        return True  # set on the instance, or looked up dynamically: call it
    hook = getattr(type(plugin), event, None)
    if hook is None:
        return False
    return not any(hook is getattr(base, event, None) for base in _NO_OP_BASES)


def _calling_plugins(event: str) -> Callable:
    """The strategy's ``_<event>``: call the plugins that implement ``event``."""
    def hook(self, **kwargs):
        self._trigger(event, **kwargs)

    hook.__name__ = hook.__qualname__ = f"_{event}"
    return hook


class TensorTraining(BaseSGDTemplate):
    """Mixin for an Avalanche SGD strategy: batches from in-memory tensors and a
    training loop that calls only the plugins that implement each hook.

    Put it after the strategy class (``class S(Naive, TensorTraining)``): it then
    sits just above ``BaseSGDTemplate``, so a strategy's own overrides (DER's
    ``_before_forward``) still run before the plugins' hooks.
    """

    _loop_hooks: dict[str, list[Callable]] | None = None
    _train_rows: tuple[Any, tuple[Tensor, Tensor, Tensor]] | None = None  # (adapted_dataset, its rows on the device)
    _sources: SourceCache | None = None  # the sources read during this experience

    def avalanche_order(self) -> bool:
        """Whether the experience's data are drawn in the order of Avalanche's ``DataLoader``
        (:class:`ckd.engines.tensor_replay.ReplayBatches`) rather than by a seeded device permutation
        (:class:`TensorBatches`): with Avalanche's ``ReplayPlugin``, whose replay loader draws
        that order, so that the experiences it leaves alone (the first) are drawn alike."""
        return any(isinstance(p, ReplayPlugin) for p in self.plugins)

    def make_train_dataloader(
        self, num_workers=0, shuffle=True, pin_memory=None, persistent_workers=False, drop_last=False, **kwargs
    ):
        self._train_rows = None
        self._sources = {}
        tensors = dataset_tensors(self.adapted_dataset, sources=self._sources)
        if tensors is None:
            return super().make_train_dataloader(
                num_workers=num_workers, shuffle=shuffle, pin_memory=pin_memory,
                persistent_workers=persistent_workers, drop_last=drop_last, **kwargs,
            )
        x, y, task = (t.to(self.device) for t in tensors)
        self._train_rows = (self.adapted_dataset, (x, y, task))
        if self.avalanche_order():
            self.dataloader = ReplayBatches((x, y, task), batch_size=self.train_mb_size, shuffle=shuffle,
                                            drop_last=drop_last)
            return
        task = int(task[0]) if task.numel() else 0  # one task label (dataset_tensors): a constant column
        generator = None
        if shuffle:
            generator = torch.Generator(device=self.device).manual_seed(permutation_seed())
        self.dataloader = TensorBatches(
            x, y, task, batch_size=self.train_mb_size, shuffle=shuffle, drop_last=drop_last, generator=generator
        )

    def _before_training_exp(self, **kwargs):
        super()._before_training_exp(**kwargs)  # the loader, then the plugins' before_training_exp
        if isinstance(self.dataloader, ReplayDataLoader):  # installed by Avalanche's ReplayPlugin
            loader = self._tensor_replay_loader(self.dataloader)
            if loader is not None:
                self.dataloader = loader

    def _tensor_replay_loader(self, loader: ReplayDataLoader) -> ReplayBatches | None:
        """The minibatches of ``loader`` gathered from tensors, when its experience and
        memory are plain tensor rows and it loads them as ``ReplayBatches`` does (one
        group each, not task-balanced, not distributed); ``None`` otherwise."""
        kwargs = dict(loader.loader_kwargs)
        collate = kwargs.pop("collate_fn", None)
        settings = {"shuffle": kwargs.pop("shuffle", False), "drop_last": kwargs.pop("drop_last", False)}
        ignored = {"num_workers", "pin_memory", "persistent_workers", "prefetch_factor"}  # the same rows either way
        if (len(loader.datasets) != 2 or loader.termination_dataset != 0 or not loader.oversample_small_datasets
                or loader.distributed_sampling or loader.never_ending or set(kwargs) - ignored
                or collate != loader.datasets[0].collate_fn):
            return None
        data, memory = loader.datasets
        if self._train_rows is not None and self._train_rows[0] is data:
            rows = self._train_rows[1]
        else:
            rows = dataset_tensors(data, sources=self._sources)
        memory_rows = dataset_tensors(memory, sources=self._sources)
        if rows is None or memory_rows is None:
            return None
        batch_size, replay_batch_size = loader.batch_sizes
        return ReplayBatches(tuple(t.to(self.device) for t in rows), tuple(t.to(self.device) for t in memory_rows),
                             batch_size=batch_size, replay_batch_size=replay_batch_size, **settings)

    def _make_empty_loss(self) -> Tensor:
        # A scalar, not Avalanche's shape (1,): each term added to it then needs no
        # reduction back to (1,) in the backward pass. Same values, same gradients.
        return torch.zeros((), device=self.device)

    def _collect_loop_hooks(self) -> None:
        # An evaluator with nothing to measure or log would only cost a call per hook.
        idle = self.evaluator is not None and not (self.evaluator.metrics or self.evaluator.loggers)
        plugins = [p for p in self.plugins if not (idle and p is self.evaluator)]
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

    _after_training_epoch = _calling_plugins("after_training_epoch")
    _before_training_iteration = _calling_plugins("before_training_iteration")
    _before_forward = _calling_plugins("before_forward")
    _after_forward = _calling_plugins("after_forward")
    _before_backward = _calling_plugins("before_backward")
    _after_backward = _calling_plugins("after_backward")
    _before_update = _calling_plugins("before_update")
    _after_update = _calling_plugins("after_update")
    _after_training_iteration = _calling_plugins("after_training_iteration")

    def _train_cleanup(self):
        super()._train_cleanup()
        self._loop_hooks = None  # bound methods of the plugins: rebuilt next epoch
        self._train_rows = self._sources = None


class TensorNaive(Naive, TensorTraining):
    """Avalanche's ``Naive`` (plugins do the rest) on the tensor-native path."""


class TensorLogitBuffer(ClassBalancedBufferWithLogits):
    """Avalanche's ``DER`` buffer (class-balanced reservoirs of rows with their logits),
    its update reading an experience of plain tensor rows without a ``DataLoader``.

    The same buffer, the same draws: the new rows' logits are the model's outputs
    in eval mode over minibatches of ``strategy.train_mb_size`` rows, in order, as
    Avalanche's ``compute_dataset_logits`` computes them (its ``DataLoader``
    iterator's seed drawn the same), held as one tensor ``(N, C)`` on the training
    device rather than a list of rows on the host; each class's reservoir then
    draws its weights as Avalanche's. Other data take Avalanche's update.
    """

    def update(self, strategy, **kwargs):
        new_data = strategy.experience.dataset
        rows = dataset_tensors(new_data.eval(), sources=getattr(strategy, "_sources", None))
        if rows is None:
            return super().update(strategy, **kwargs)
        x, y, _ = rows
        logits = _dataset_logits(strategy.model, x.to(strategy.device), strategy.train_mb_size)
        new_data_with_logits = make_avalanche_dataset(
            new_data,
            data_attributes=[TensorDataAttribute(FlatData([logits]), name="logits", use_in_getitem=True)],
        )
        class_rows: dict[int, list[int]] = defaultdict(list)
        for i, target in enumerate(y.tolist()):
            class_rows[target].append(i)
        by_class = {c: new_data_with_logits.subset(index) for c, index in class_rows.items()}
        self.seen_classes.update(by_class)
        lengths = dict(zip(self.seen_classes, self.get_group_lengths(len(self.seen_classes))))
        for c, new_rows in by_class.items():
            if c in self.buffer_groups:
                group = self.buffer_groups[c]
                group.update_from_dataset(new_rows)
                group.resize(strategy, lengths[c])
            else:
                group = ReservoirSamplingBuffer(lengths[c])
                group.update_from_dataset(new_rows)
                self.buffer_groups[c] = group
        for c, group in self.buffer_groups.items():
            group.resize(strategy, lengths[c])


@torch.no_grad()
def _dataset_logits(model: torch.nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """``model``'s outputs ``(N, C)`` on ``x (N, ...)`` in eval mode, ``batch_size`` rows at a
    time, after the draw of the ``DataLoader`` iterator Avalanche reads them with."""
    loader_seed()
    was_training = model.training
    model.eval()
    logits = torch.cat([model(rows) for rows in x.split(batch_size)])
    if was_training:
        model.train()
    return logits


class TensorDER(DER, TensorTraining):
    """Avalanche's ``DER`` on the tensor-native path, with the numbers of Avalanche's.

    Its buffer (:class:`TensorLogitBuffer`) is replayed from tensors on the
    device (:class:`ckd.engines.tensor_replay.CycledBatches`): the rows and logits of
    Avalanche's replay ``DataLoader``, in its order, read once per experience.
    Each step's replayed rows are drawn when the step starts, before the plugins'
    ``before_training_iteration`` hooks rather than after their ``before_forward``
    ones (as Avalanche's ``DER`` draws them): the same rows unless a plugin draws
    from torch's global generator in those hooks; the step itself then waits for
    nothing. The experience's own data are drawn in Avalanche's order too.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.storage_policy = TensorLogitBuffer(self.mem_size, adaptive_size=True)
        self._replayed: list[Tensor] | None = None

    def avalanche_order(self) -> bool:
        return True

    def _before_training_exp(self, **kwargs):
        super()._before_training_exp(**kwargs)  # DER's replay loader (no draw yet), the data's, the plugins'
        if self.replay_loader is not None:
            rows = dataset_tensors(self.storage_policy.buffer, "logits", sources=self._sources)
            if rows is not None:
                self.replay_loader = CycledBatches([t.to(self.device) for t in rows], self.batch_size_mem)

    def _before_training_iteration(self, **kwargs):
        if isinstance(self.replay_loader, CycledBatches):
            self._replayed = next(self.replay_loader)
        super()._before_training_iteration(**kwargs)

    def _before_forward(self, **kwargs):
        if self._replayed is None:  # no buffer yet, or Avalanche's loader
            return super()._before_forward(**kwargs)
        super(DER, self)._before_forward(**kwargs)  # the plugins' hooks, which DER calls first
        (x, y, task, logits), self._replayed = self._replayed, None
        self.mbatch[0] = torch.cat((x, self.mbatch[0]))
        self.mbatch[1] = torch.cat((y, self.mbatch[1]))
        self.mbatch[2] = torch.cat((task, self.mbatch[2]))
        self.batch_logits = logits

    def _train_cleanup(self):
        super()._train_cleanup()
        self._replayed = None


class TensorJointTraining(JointTraining, TensorTraining):
    """Avalanche's ``JointTraining`` on the tensor-native path."""
