"""Several seeds of one run in one pass: the seeds' models stacked and trained with ``torch.func``.

:class:`VectorizedPass` trains ``S`` seeds' models of one architecture as one stacked model
(:class:`ckd.engines.stacked_model.StackedModel`; one backward and one SGD step update every
seed). Each seed keeps what its sequential run has, as batched tensors: its data order (the
tensor path's seeded permutation, :mod:`ckd.engines.training`), its replay buffer (a
:class:`ckd.distillation.buffer.ReplayBuffer` with the seed's generator) and its teacher (a
snapshot, cached logits or an EMA of its weights, stacked: :mod:`ckd.engines.stacked_kd`).
The losses are :mod:`ckd.distillation.losses`', per seed, summed
(:func:`ckd.engines.stacked_kd.summed_loss`), so each seed's accuracies match its sequential
run (``loader="tensor"``) up to floating-point rounding: only the batched matrix products
round differently (with two or three seeds on split-digits the matrices come out equal; with
five seeds over ten epochs a few test samples of an experience flip).

``replay`` runs each seed's minibatches of Avalanche's replay loader
(:mod:`ckd.engines.vectorized_replay`). Which runs may be vectorized, and building each seed
as its sequential run, is :mod:`ckd.benchmarking.vectorized_runs`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ckd.engines.stacked_kd import StackedEMA, StackedKD, summed_loss
from ckd.engines.stacked_model import StackedModel
from ckd.engines.tensor_data import TensorBatches, permutation_seed
from ckd.engines.vectorized_replay import StackedExperienceReplay

__all__ = ["VectorizedPass"]


class _SeedData:
    """The seeds' training tensors of one experience, shared when every seed has the same."""

    def __init__(self, data: list[tuple[Tensor, Tensor, Tensor]]) -> None:
        first = data[0]
        self.shared = all(all(torch.equal(a, b) for a, b in zip(first, d)) for d in data[1:])
        if self.shared:
            self.x, self.y, self.t = first
        else:
            self.x, self.y, self.t = (torch.stack([d[k] for d in data]) for k in range(3))
        self.rows = torch.arange(len(data), device=first[0].device).unsqueeze(1)
        # One task label for every row (an experience of dataset_tensors): a constant column, not gathered.
        t = self.t
        self.task_label = int(t.reshape(-1)[0]) if t.numel() and bool((t == t.reshape(-1)[0]).all()) else None
        self._task_column: Tensor | None = None

    def epoch(self, order: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """The minibatches of one pass: ``order (S, N)``, each seed's row order, cut in ``batch_size``
        columns. The full batches' indices are laid out once, so a step only selects a row of them."""
        n_seeds, n = order.shape
        full = n // batch_size
        index = order if self.shared else order + self.rows * self.x.shape[1]
        steps = index[:, : full * batch_size].reshape(n_seeds, full, batch_size).transpose(0, 1).reshape(full, -1)
        shape = (n_seeds, batch_size)
        for k in range(full):
            yield self._gather(steps[k], shape)
        if full * batch_size < n:
            rest = index[:, full * batch_size :]
            yield self._gather(rest.reshape(-1), rest.shape)

    def _gather(self, flat: Tensor, shape: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        parts = (self.x, self.y) if self.task_label is not None else (self.x, self.y, self.t)
        out = [
            (part if self.shared else part.flatten(0, 1)).index_select(0, flat).view(*shape, *part.shape[1 + (not self.shared):])
            for part in parts
        ]
        if self.task_label is not None:
            column = self._task_column
            if column is None or column.shape[1] < shape[1]:
                column = self._task_column = torch.full(shape, self.task_label, dtype=self.t.dtype, device=flat.device)
            out.append(column[:, : shape[1]])
        return tuple(out)


def _step(net: StackedModel, lr: float, kd: StackedKD | None, x: Tensor, y: Tensor, t: Tensor) -> None:
    """One training iteration of every seed: ``x (S, b, ...)``, ``y, t (S, b)``; the update is
    ``torch.optim.SGD``'s without momentum (its ``foreach`` arithmetic, without its per-call
    bookkeeping, which one stacked step pays once where sequential runs pay it per seed)."""
    replay = kd.sample() if kd is not None and kd.replays() else None
    inputs = x if replay is None else torch.cat([x, replay["x"]], dim=1)
    out = net(inputs)
    if replay is None:
        loss, kd_term = summed_loss(out, y, None, None, None, 0.0, 0.0, 1.0)
    else:
        target, mask = kd.targets(replay, net)
        loss, kd_term = summed_loss(out, y, replay["y"], target, mask, kd.alpha, kd.beta, kd.temperature)
        if kd_term is not None:
            kd.note_finite(kd_term)
    params = net.tensors
    for p in params:
        p.grad = None
    loss.backward()
    with torch.no_grad():
        torch._foreach_add_(params, [p.grad for p in params], alpha=-lr)


class VectorizedPass:
    """``S`` seeds' ``models`` (one architecture, one method) trained as one stacked model.

    method, args: the method's name and resolved settings (``naive``, ``replay`` or a
    ``kd-*`` one); seeds: one per model (each seed's buffer generator and data order);
    iterations: the training steps of each experience; eval_ema_half_life > 0 keeps an EMA
    of every seed's weights (:attr:`eval_ema`) for scoring."""

    def __init__(self, models: Sequence[nn.Module], method: str, args: dict[str, Any], seeds: Sequence[int], *,
                 batch_size: int, epochs: int, lr: float, iterations: Sequence[int], device: torch.device,
                 eval_ema_half_life: float = 0.0) -> None:
        self.seeds = list(seeds)
        self.batch_size, self.epochs, self.iterations, self.device = batch_size, epochs, list(iterations), device
        self.net = StackedModel(models).to(device)
        self.lr = lr  # plain SGD, as the sequential runs' optimizer (_step)
        self.replay = (StackedExperienceReplay.from_args(args, self.seeds, batch_size=batch_size, epochs=epochs,
                                                         device=device) if method == "replay" else None)
        self.kd = None if method in ("naive", "replay") else StackedKD(method, args, self.seeds, device)
        self.eval_ema = StackedEMA(eval_ema_half_life) if eval_ema_half_life > 0 else None  # EMAEvaluationPlugin's

    def train_experience(self, i: int, raw: list[tuple[Tensor, Tensor, Tensor]], task: int, classes,
                         on_iteration=None) -> None:
        """Train every seed on experience ``i`` (``raw``: each seed's ``(x, y, t)`` on the device;
        ``task``, ``classes``: its task label and classes), in each seed's own data order."""
        kd, net = self.kd, self.net
        if self.replay is not None:  # each seed's minibatches of Avalanche's replay loader, memory rows included
            if self.eval_ema is not None:
                self.eval_ema.start_experience(net, self.iterations[i])
            net.train()
            for x, y, t in self.replay.batches(i, raw):
                _step(net, self.lr, None, x, y, t)
                if self.eval_ema is not None:
                    self.eval_ema.update(net)
                if on_iteration is not None:
                    on_iteration()
            self.replay.after_experience(raw)
            return
        orders = []
        for seed, (x, y, t) in zip(self.seeds, raw):  # the seed's data order, as the tensor path draws it
            torch.manual_seed(seed * 1000 + i)
            generator = torch.Generator(device=self.device).manual_seed(permutation_seed())
            orders.append(TensorBatches(x, y, t, batch_size=self.batch_size, generator=generator))
        data = _SeedData(raw)
        if kd is not None:
            kd.before_experience(i, self.iterations[i], net, self.device)
        if self.eval_ema is not None:
            self.eval_ema.start_experience(net, self.iterations[i])
        net.train()
        b = self.batch_size
        for _ in range(self.epochs):
            order = torch.stack([o.order() for o in orders])
            for x, y, t in data.epoch(order, b):
                _step(net, self.lr, kd, x, y, t)
                if kd is not None:
                    kd.after_iteration(x, y, t, i, net)
                if self.eval_ema is not None:
                    self.eval_ema.update(net)
                if on_iteration is not None:
                    on_iteration()
            if kd is not None:
                kd.check_finite(self.seeds, i)
        if kd is not None:
            kd.after_experience(i, raw, task, classes, net)
