"""Several seeds of one run in one pass: the seeds' models stacked and trained with ``torch.func``.

``run_vectorized(configs)`` takes run configs that differ only in their seed and
trains them as one stacked model (``stack_module_state``; the forward is
``vmap(functional_call)``; one backward and one SGD step update every seed). Each
seed keeps what its sequential run has, as batched tensors: its stream and
initialisation (built exactly as :func:`ckd.benchmarking.runner.run` builds them), its data
order (the tensor path's seeded permutation, :mod:`ckd.engines.training`), its replay
buffer (a :class:`ckd.distillation.buffer.ReplayBuffer` with the seed's generator) and its
teacher (a snapshot, cached logits or an EMA of its weights, stacked). The losses
are :mod:`ckd.distillation.losses`', per seed, summed (:func:`_summed_loss`). Each seed's result is the record
:func:`ckd.benchmarking.runner.run` writes, marked ``"vectorized": true``; its accuracies match
the seed's sequential run (``loader="tensor"``) up to floating-point rounding:
the losses are computed per seed, so only the batched matrix products round
differently (with two or three seeds on split-digits the matrices come out equal;
with five seeds over ten epochs a few test samples of an experience flip).

What it covers (:func:`check_vectorizable` says why anything else is refused):
``naive``; ``replay`` with a reservoir or experience-balanced memory (each seed's
minibatches of Avalanche's replay loader, :mod:`ckd.engines.vectorized_replay`); and
``kd-replay`` / ``kd-replay-cached`` / ``kd-ema`` with one teacher
(snapshot, cached logits, own-experience logits or EMA), a reservoir or class-balanced buffer, ``alpha``,
``beta``, ``temperature`` (``alpha`` per experience too); every method scored with an EMA of
the weights or not (the run's ``eval_ema_half_life``, the trained weights scored too); models without
normalisation or dropout layers (``mlp``, ``cnn``); streams of in-memory tensors
without augmentation; no mixed precision, no periodic evaluation.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from ckd.distillation.buffer import ReplayBuffer, StackedBuffers
from ckd.distillation.devices import to_device
from ckd.distillation.losses import check_temperature, soft_kl_sum, weighted
from ckd.engines.training import TensorBatches, dataset_tensors, permutation_seed

__all__ = [
    "VECTORIZED_METHODS",
    "StackedModel",
    "VectorizedTraining",
    "check_vectorizable",
    "run_vectorized",
    "run_vectorized_to_files",
]

VECTORIZED_METHODS = ("naive", "replay", "kd-replay", "kd-replay-cached", "kd-ema")

# kd-* settings vectorize implements, and the ones it needs at a given value (parts it does not stack).
_KD_SETTINGS = {"mem_size", "replay_batch_size", "alpha", "temperature", "beta", "policy", "teacher",
                "known_classes_only", "ensemble", "ema_half_life", "current_experience_targets"}
_KD_FIXED = {"n_teachers": 1, "logit_weight": 0.0, "current_alpha": 0.0, "current_classes_only": False,
             "weight_aligning": False}
_TEACHERS = ("snapshot", "cached", "own", "ema")
_LOGIT_TEACHERS = ("cached", "own")  # logits kept in the buffer: refreshed every experience, or once per slot
# Batch of the once-per-experience passes over the buffer, as the KD plugin's.
_PASS_BATCH = 1000


def check_vectorizable(configs: Sequence) -> None:
    """Raise a one-line ``ValueError`` naming what to change when ``configs`` cannot
    run as one vectorized pass."""
    from ckd.benchmarking.methods import resolve_method_args

    if not configs:
        raise ValueError("vectorize needs at least one run")
    first = configs[0]
    seeds = [c.seed for c in configs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"vectorize needs distinct seeds, got {seeds}")
    for c in configs[1:]:
        if dataclasses.replace(c, seed=first.seed) != first:
            raise ValueError(
                f"vectorize trains runs that differ only in their seed; {first.name} and {c.name} on "
                f"{first.stream} / {c.stream} differ in more: run them without --vectorize or in separate groups"
            )
    method = first.method
    if method not in VECTORIZED_METHODS:
        raise ValueError(
            f"method {method!r} cannot be vectorized (vectorize covers {', '.join(VECTORIZED_METHODS)}): "
            "run it without --vectorize"
        )
    refusals = {
        "loader": (first.loader != "tensor", "loader='tensor'"),
        "amp": (first.amp is not None, "no mixed precision (amp)") if hasattr(first, "amp") else (False, ""),
        "eval_every": (first.eval_every != 0, "eval_every=0"),
        "model": (first.model not in ("mlp", "cnn"), "model 'mlp' or 'cnn'"),
    }
    for name, (refused, needed) in refusals.items():
        if refused:
            raise ValueError(f"vectorize needs {needed}, got {name}={getattr(first, name)!r}: run without --vectorize")
    if method == "naive":
        return
    args = resolve_method_args(method, first.method_args)
    if method == "replay":
        from ckd.engines.vectorized_replay import check_replay_args

        check_replay_args(args)
        return
    # A setting vectorize does not know may change what even its default does: refuse it.
    unknown = sorted(set(args) - _KD_SETTINGS - set(_KD_FIXED))
    if unknown:
        raise ValueError(f"vectorize does not implement the {method} setting(s) {unknown}: run without --vectorize")
    for name, value in _KD_FIXED.items():
        if name in args and args[name] != value:
            raise ValueError(
                f"vectorize needs {name}={value!r} (got {args[name]!r}): that part is not stacked; run without --vectorize"
            )
    teacher = "cached" if method == "kd-replay-cached" else args.get("teacher", "snapshot")
    if teacher not in _TEACHERS:
        raise ValueError(f"vectorize covers the teachers {_TEACHERS}, got teacher={teacher!r}: run without --vectorize")


class StackedModel(nn.Module):
    """``S`` models of one architecture as stacked parameters ``(S, ...)``.

    ``forward(x)``: ``x (S, B, ...)`` → ``(S, B, C)``, seed ``s``'s model on ``x[s]``
    (``vmap`` of ``functional_call``). ``params`` may replace the trained
    parameters (a teacher's, same layout). The models must hold no buffers.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        for model in models:
            if any(True for _ in model.buffers()) or any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules()):
                raise ValueError(
                    "vectorize needs a model without buffers or dropout (no BatchNorm): use model 'mlp' or 'cnn'"
                )
        params, _ = stack_module_state(list(models))
        self.names = list(params)
        self.stacked = nn.ParameterList([nn.Parameter(params[name].detach().clone()) for name in self.names])
        self.base = [copy.deepcopy(models[0]).to("meta")]  # a list: not a submodule
        self.n_models = len(models)
        self.layers = _plain_layers(models[0])
        self._cache()

    def _cache(self) -> None:
        # ParameterList indexing is slow Python; a step reads the parameters twice.
        self.tensors: list[Tensor] = list(self.stacked)
        self._params = dict(zip(self.names, self.tensors))

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._cache()
        return out

    def param_dict(self) -> dict[str, Tensor]:
        return self._params

    def forward(self, x: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        base = self.base[0]
        params = self.param_dict() if params is None else params
        if self.layers is not None:
            return _plain_forward(self.layers, params, x)

        def one(p: dict[str, Tensor], xs: Tensor) -> Tensor:
            return functional_call(base, p, (xs,))

        return vmap(one)(params, x)

    def seed_forward(self, s: int, x: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        """Seed ``s``'s model alone on ``x (B, ...)``."""
        params = self.param_dict() if params is None else params
        return functional_call(self.base[0], {k: v[s] for k, v in params.items()}, (x,))

    def detached(self) -> dict[str, Tensor]:
        """A copy of the stacked parameters (a snapshot teacher)."""
        return {k: v.detach().clone() for k, v in self.param_dict().items()}

    @torch.no_grad()
    def copy_into(self, s: int, model: nn.Module, params: dict[str, Tensor] | None = None) -> nn.Module:
        """Load seed ``s``'s parameters (or those of ``params``, same layout) into ``model``."""
        params = self.param_dict() if params is None else params
        for name, p in model.named_parameters():
            p.copy_(params[name][s])
        return model


def _plain_layers(model: nn.Module) -> list[tuple[str, ...]] | None:
    """An ``nn.Sequential`` of ``Flatten``, ``Linear``, ``ReLU`` and ``Identity`` layers (the
    ``mlp``) as steps that :func:`_plain_forward` runs with batched matrix products; ``None``
    for anything else (run with ``vmap``, whose per-call cost dominates a small model's step)."""
    if not isinstance(model, nn.Sequential):
        return None
    steps = []
    for name, layer in model.named_children():
        if isinstance(layer, nn.Linear):
            steps.append(("linear", f"{name}.weight", f"{name}.bias" if layer.bias is not None else ""))
        elif isinstance(layer, nn.ReLU):
            steps.append(("relu",))
        elif isinstance(layer, nn.Flatten) and layer.start_dim == 1 and layer.end_dim == -1 and not steps:
            steps.append(("flatten",))
        elif not isinstance(layer, nn.Identity):
            return None
    return steps


def _plain_forward(steps: list[tuple[str, ...]], params: dict[str, Tensor], x: Tensor) -> Tensor:
    """``x (S, B, ...)`` through :func:`_plain_layers`' steps with stacked ``params`` → ``(S, B, C)``.

    Activations are kept transposed, ``(S, features, B)``, and each layer computes
    ``W · h`` (``baddbmm``): the weight gradients then come out in the weights' own
    layout, with no copy to make them contiguous, and no operand is ever copied."""
    h = x.flatten(2) if steps and steps[0][0] == "flatten" else x
    if h.dim() != 3:
        raise ValueError(f"a stacked linear layer needs inputs (S, B, features), got {tuple(h.shape)}")
    h = h.transpose(1, 2)
    for step in steps:
        if step[0] == "linear":
            weight = params[step[1]]
            h = torch.baddbmm(params[step[2]].unsqueeze(2), weight, h) if step[2] else torch.bmm(weight, h)
        elif step[0] == "relu":
            h = torch.relu(h)
    return h.transpose(1, 2)


class _StackedEMA:
    """An exponential moving average of every seed's weights, stacked: as
    :class:`ckd.distillation.teachers.EMAWeights` (copied from the model when the first experience
    starts, ``λ`` set per experience from its steps, one ``lerp`` per iteration)."""

    def __init__(self, half_life: float) -> None:
        self.half_life = half_life
        self.decay = 0.0
        self.params: dict[str, Tensor] | None = None

    def start_experience(self, net: "StackedModel", steps: int) -> None:
        from ckd.distillation.teachers import decay_for_half_life

        self.decay = decay_for_half_life(self.half_life, steps)
        if self.params is None:
            self.params = net.detached()

    @torch.no_grad()
    def update(self, net: "StackedModel") -> None:
        live = net.param_dict()
        torch._foreach_lerp_([self.params[k] for k in net.names], [live[k].detach() for k in net.names], 1.0 - self.decay)


class _StackedKD:
    """Replay with distillation for ``S`` seeds: one :class:`ReplayBuffer` per seed
    (its own generator), the teacher as stacked parameters or cached logits."""

    def __init__(self, method: str, args: dict[str, Any], seeds: Sequence[int], device: torch.device) -> None:
        self.args = args
        self.teacher = "cached" if method == "kd-replay-cached" else args.get("teacher", "snapshot")
        alpha = args["alpha"]
        self.alphas = tuple(alpha) if isinstance(alpha, (list, tuple)) else None
        self.alpha_value = 0.0 if self.alphas is not None else float(alpha)
        self.beta = float(args["beta"])
        self.temperature = float(args["temperature"])
        self.policy = args["policy"]
        self.replay_batch_size = args["replay_batch_size"]
        self.known_only = bool(args.get("known_classes_only", False))
        # A frozen teacher gives no target to replayed samples of the experience being
        # learned unless current_experience_targets (results before that setting: all get one).
        self.taught_only = self.teacher == "snapshot" and not args.get("current_experience_targets", True)
        # The snapshot's targets can be computed once per experience for the whole buffer when
        # no slot a step replays can change before it is replayed with a target (see after_experience).
        self.snapshot_targets_kept = self.teacher == "snapshot" and (self.taught_only or self.policy == "class_balanced")
        self.finished = -1  # the latest experience that has ended
        self.uses_replay = max(self.alphas or (self.alpha_value,)) > 0 or self.beta > 0
        self.buffers = [ReplayBuffer(args["mem_size"], self.policy, device, seed) for seed in seeds]
        self.stacked = StackedBuffers(self.buffers)
        self.seen = torch.zeros(0, 0, dtype=torch.bool)
        self.teacher_params: dict[str, Tensor] | None = None
        self.teacher_seen = self.seen
        self.cover_all = False
        self.has_logits = False
        self.alpha = 0.0
        self.ema = _StackedEMA(args["ema_half_life"]) if self.teacher == "ema" else None
        self._kd_total: Tensor | None = None  # the epoch's KD terms summed: NaN/inf once any is
        self._table: tuple | None = None

    # ---------------------------------------------------------------- experience
    def before_experience(self, exp: int, steps: int, net: StackedModel, device: torch.device) -> None:
        self.alpha = self.alphas[exp] if self.alphas is not None else self.alpha_value
        if self.alphas is not None and exp >= len(self.alphas):
            raise ValueError(f"alpha has {len(self.alphas)} per-experience values but experience {exp} is being trained")
        self._kd_total = torch.zeros((), device=device)
        if self.ema is not None:
            self.ema.start_experience(net, steps)

    @property
    def ready(self) -> bool:
        return self.has_logits if self.teacher in _LOGIT_TEACHERS else self.teacher_params is not None

    def after_experience(self, exp: int, data: list[tuple[Tensor, Tensor, Tensor]], task: int,
                         classes: list[int], net: StackedModel) -> None:
        seen = torch.zeros(max(self.seen.shape[0], task + 1), max(self.seen.shape[1], max(classes) + 1), dtype=torch.bool)
        seen[: self.seen.shape[0], : self.seen.shape[1]] = self.seen
        seen[task, classes] = True
        self.seen = seen
        self.finished = exp
        if self.policy == "class_balanced" and self.uses_replay:
            for buffer, (x, y, t) in zip(self.buffers, data):
                plan = buffer.class_balanced_select(y, exp)
                if plan.index.numel():
                    index = plan.index.to(x.device)
                    buffer.class_balanced_fill(plan, x[index], y[index], t[index], exp)
                elif not buffer.is_empty:
                    buffer.class_balanced_fill(plan, buffer.x[:0], buffer.y[:0], buffer.task[:0], exp)
        if self.teacher == "snapshot":
            self.teacher_params = net.detached()
            self.teacher_seen = self.seen.clone()
            if self.snapshot_targets_kept and self.uses_replay and not self.buffers[0].is_empty:
                # The snapshot's logits for every slot, gathered by each step instead of a teacher
                # forward: the snapshot is frozen and, within an experience, a slot changes only by
                # taking a sample of that experience, which gets no target (a class-balanced buffer
                # does not change at all).
                self._cache_logits(net, only_new=False)
        elif self.teacher == "ema":
            self.teacher_params = self.ema.params  # live: the average goes on moving
            self.teacher_seen = self.seen.clone()
        elif self.uses_replay and not self.buffers[0].is_empty:
            self._cache_logits(net, only_new=self.teacher == "own")

    @torch.no_grad()
    def _cache_logits(self, net: StackedModel, only_new: bool) -> None:
        """Each seed's logits (the model as it is now) for its buffer slots (``only_new``: the
        slots without any yet, as the own-experience teacher keeps them), in passes of ``_PASS_BATCH``."""
        for s, buffer in enumerate(self.buffers):
            slots = torch.arange(len(buffer), device=buffer.device)
            if only_new and buffer.logits_mask is not None:
                slots = (~buffer.logits_mask.any(dim=1)).nonzero().squeeze(1)  # once per experience
            for start in range(0, slots.shape[0], _PASS_BATCH):
                index = slots[start : start + _PASS_BATCH]
                rows = buffer.gather(index)
                logits = net.seed_forward(s, rows.x)
                mask = self._mask(self.seen, rows.task, logits.shape[-1])
                buffer.set_logits(index, logits, torch.ones_like(logits, dtype=torch.bool) if mask is None else mask)
        self.has_logits = True
        self.cover_all = all(bool(b.logits_mask.all()) for b in self.buffers)  # one sync per experience

    def _mask(self, seen: Tensor, task: Tensor, width: int) -> Tensor | None:
        """bool ``(..., width)``: the classes the teacher knew for each row's task
        (``None``: every output, as ``known_classes_only=False`` gives). The table is
        built once per teacher, so a step only indexes it."""
        if not self.known_only:
            return None
        key = (id(seen), width, str(task.device))
        if self._table is None or self._table[0] != key:
            table = torch.zeros(seen.shape[0] + 1, width, dtype=torch.bool)
            w = min(width, seen.shape[1])
            table[:-1, :w] = seen[:, :w]
            self._table = (key, to_device(table, task.device))
        table = self._table[1]
        return table[task.clamp_max(table.shape[0] - 1)]

    # ------------------------------------------------------------------ iteration
    def replays(self) -> bool:
        has_loss = self.beta > 0 or (self.alpha > 0 and self.ready)
        return self.uses_replay and not self.buffers[0].is_empty and has_loss

    def sample(self) -> dict[str, Tensor | None]:
        """Each seed's draw from its own buffer, stacked: ``x (S, R, ...)``, ``y (S, R)``, and
        what the targets need of ``task``, ``experience`` and cached ``logits``."""
        fields = ["x", "y"]
        if self.known_only:
            fields.append("task")
        if self.taught_only:
            fields.append("experience")
        logits = self.teacher in _LOGIT_TEACHERS and self.has_logits
        if logits:
            fields += ["logits"] if self.cover_all else ["logits", "logits_mask"]
        elif self.snapshot_targets_kept and self.ready:
            fields.append("logits")
        out = self.stacked.sample(self.replay_batch_size, tuple(fields))
        if logits and self.cover_all:
            out["logits_mask"] = None
        return out

    @torch.no_grad()
    def targets(self, replay: dict[str, Tensor | None], net: StackedModel) -> tuple[Tensor | None, Tensor | None]:
        """Soft-target logits ``(S, R, C_t)`` and mask (``None``: every output)."""
        if self.alpha <= 0 or not self.ready:
            return None, None
        if self.teacher in _LOGIT_TEACHERS:
            return replay["logits"], replay["logits_mask"]
        if self.snapshot_targets_kept:
            logits = replay["logits"]
        else:
            logits = net(replay["x"], params=self.teacher_params)
        mask = self._mask(self.teacher_seen, replay.get("task"), logits.shape[-1])
        if self.taught_only:  # as ckd.distillation.teachers's _only_taught, on the device
            taught = (replay["experience"] <= self.finished).unsqueeze(-1).expand_as(logits)
            mask = taught if mask is None else mask & taught
        return logits, mask

    def note_finite(self, kd: Tensor) -> None:
        """``kd``: the seeds' KD terms of this step, summed (checked on the device)."""
        self._kd_total += kd.detach()

    def check_finite(self, seeds: Sequence[int], exp: int) -> None:
        if self._kd_total is not None and not bool(torch.isfinite(self._kd_total)):  # once per epoch
            raise FloatingPointError(
                f"the distillation loss became NaN or infinite in experience {exp} for one of the seeds {list(seeds)}; "
                "lower the learning rate or alpha"
            )

    def after_iteration(self, x: Tensor, y: Tensor, t: Tensor, exp: int, net: StackedModel) -> None:
        if self.ema is not None:
            self.ema.update(net)
        if self.policy == "reservoir" and self.uses_replay:
            self.stacked.reservoir_add(x, y, t, exp)
            self.cover_all = False


def _summed_soft_kl(student: Tensor, teacher: Tensor, temperature: float, mask: Tensor | None) -> Tensor:
    """The seeds' :func:`ckd.distillation.losses.soft_kl` terms summed: ``student (S, R, C_s)``, ``teacher (S, R, C_t)``,
    ``mask (S, R, C_t)`` or ``None``; every seed's rows scaled by ``T² / R``, as its own run scales them."""
    check_temperature(temperature)
    if student.shape[-1] != teacher.shape[-1]:  # a head that grew since the teacher
        student = student[..., : teacher.shape[-1]]
    return soft_kl_sum(student, teacher, temperature, mask) * (temperature**2) / student.shape[1]


@functools.lru_cache(maxsize=64)
def _row_weights(n: int, replayed: int, beta: float, device: torch.device) -> Tensor:
    """``(n + replayed,)``: each row's weight in its seed's loss, ``1/n`` for a current row (the
    criterion's mean) and ``β/R`` for a replayed one (the replay cross-entropy's)."""
    weights = torch.full((n + replayed,), 1.0 / n, device=device)  # filled on the device: no host copy
    if replayed:
        weights[n:] = beta / replayed
    return weights


def _summed_loss(
    out: Tensor, y: Tensor, replay_y: Tensor | None, target: Tensor | None, mask: Tensor | None,
    alpha: float, beta: float, temperature: float,
) -> tuple[Tensor, Tensor | None]:
    """The sum over seeds of each seed's loss, with its terms as the strategy and the KD plugin
    add them, and the seeds' KD terms summed (``None`` without a teacher).

    out ``(S, n + R, C)``: each seed's current rows, then its replayed ones; y ``(S, n)``;
    replay_y ``(S, R)``; target ``(S, R, C_t)``. The cross-entropies are one weighted sum over
    all rows (:func:`_row_weights`: each seed's mean over its own rows, which a mean over all
    seeds' rows, ``1/(S·n)``, is not: that rounds differently and, over thousands of steps,
    moves the seeds' accuracies by points).
    """
    n = y.shape[1]
    replay_ce = replay_y is not None and beta > 0
    rows = out if replay_ce or out.shape[1] == n else out[:, :n]
    labels = torch.cat([y, replay_y], dim=1) if replay_ce else y
    ce = F.cross_entropy(rows.reshape(-1, rows.shape[-1]), labels.reshape(-1), reduction="none")
    weights = _row_weights(n, labels.shape[1] - n, float(beta) if replay_ce else 0.0, out.device)
    loss = (ce.view(labels.shape) * weights).sum()
    kd = None
    if target is not None:
        kd = _summed_soft_kl(out[:, n:], target, temperature, mask)
        loss = loss + weighted(alpha, kd)
    return loss, kd


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


class VectorizedTraining:
    """The seeds of ``configs`` (one run per seed, otherwise equal) as one stacked
    model: built as :func:`ckd.benchmarking.runner.run` builds each seed's run, then trained one
    experience at a time (:meth:`train_experience`) and scored per seed (:meth:`score`)."""

    def __init__(self, configs: Sequence, data_root: str | os.PathLike | None = None) -> None:
        from ckd.benchmarking.methods import resolve_method_args
        from ckd.benchmarking.runner import PER_EXPERIENCE_ARGS, AccuracyEvaluator, seed_everything
        from ckd.data.models import make_model
        from ckd.data.streams import make_stream
        from ckd.engines.vectorized_replay import StackedExperienceReplay

        check_vectorizable(configs)
        self.configs = list(configs)
        first = self.first = self.configs[0]
        self.seeds = [c.seed for c in configs]
        self.device = torch.device(first.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but torch.cuda.is_available() is False")
        torch.set_num_threads(first.threads)
        self.streams, self.models = [], []
        for config in configs:  # as ckd.benchmarking.runner.run builds them, seed by seed
            seed_everything(config.seed)
            stream_args = dict(
                seed=config.seed, data_root=data_root, n_experiences=config.n_experiences,
                task_labels=config.task_labels, validation_fraction=config.validation_fraction,
                max_train_per_experience=config.max_train_per_experience,
                max_test_per_experience=config.max_test_per_experience,
            )
            if hasattr(config, "checksum"):
                stream_args["checksum"] = config.checksum
            stream = make_stream(config.stream, **stream_args)
            if getattr(stream, "augmentation", None) is not None:
                raise ValueError(f"vectorize does not apply {config.stream}'s training augmentation: run without --vectorize")
            self.streams.append(stream)
            self.models.append(make_model(config.model, stream.input_shape, stream.n_classes))
        self.evaluators = [AccuracyEvaluator(s, self.device, first.eval_batch_size) for s in self.streams]
        self.train_streams = [s.benchmark.train_stream for s in self.streams]
        self.n_experiences = len(self.train_streams[0])
        self.iterations = [math.ceil(len(e.dataset) / first.batch_size) * first.epochs for e in self.train_streams[0]]
        args = resolve_method_args(first.method, first.method_args)
        for key in PER_EXPERIENCE_ARGS:
            value = args.get(key)
            if isinstance(value, (list, tuple)) and len(value) != self.n_experiences:
                raise ValueError(
                    f"{key} is a per-experience list of {len(value)} values but {first.stream} has "
                    f"{self.n_experiences} experiences"
                )
        self.net = StackedModel(self.models).to(self.device)
        self.lr = first.lr  # plain SGD, as the sequential runs' optimizer (_step)
        self.replay = (StackedExperienceReplay.from_args(args, self.seeds, batch_size=first.batch_size, epochs=first.epochs,
                                                         device=self.device) if first.method == "replay" else None)
        self.kd = None if first.method in ("naive", "replay") else _StackedKD(first.method, args, self.seeds, self.device)
        half_life = getattr(first, "eval_ema_half_life", 0.0) or 0.0
        self.eval_ema = _StackedEMA(half_life) if half_life > 0 else None  # ckd.distillation.parts.weight_averaging's
        self.matrices: list[list[list[float]]] = [[] for _ in configs]
        self.task_matrices: list[list[list[float]]] = [[] for _ in configs]
        self.trained_matrices: list[tuple[list, list]] = [([], []) for _ in configs]  # with an EMA scored
        self.diverged_at: list[int | None] = [None] * len(configs)

    def _experience_data(self, i: int) -> list[tuple[Tensor, Tensor, Tensor]]:
        raw = []
        for train in self.train_streams:
            tensors = dataset_tensors(train[i].dataset.train())
            if tensors is None:
                raise ValueError(f"experience {i} of {self.first.stream} is not in-memory tensors: run without --vectorize")
            raw.append(tuple(t.to(self.device) for t in tensors))
        sizes = {x.shape[0] for x, _, _ in raw}
        if len(sizes) > 1:
            raise ValueError(
                f"the seeds' experience {i} differ in size {sorted(sizes)}: vectorize needs equal sizes "
                "(no validation split or subsampling that depends on the seed)"
            )
        return raw

    def train_experience(self, i: int, on_iteration=None) -> None:
        """Train every seed on experience ``i``, in each seed's own data order."""
        first, kd, net = self.first, self.kd, self.net
        raw = self._experience_data(i)
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
        for config, (x, y, t) in zip(self.configs, raw):  # the seed's data order, as the tensor path draws it
            torch.manual_seed(config.seed * 1000 + i)
            generator = torch.Generator(device=self.device).manual_seed(permutation_seed())
            orders.append(TensorBatches(x, y, t, batch_size=first.batch_size, generator=generator))
        data = _SeedData(raw)
        if kd is not None:
            kd.before_experience(i, self.iterations[i], net, self.device)
        if self.eval_ema is not None:
            self.eval_ema.start_experience(net, self.iterations[i])
        net.train()
        b = first.batch_size
        for _ in range(first.epochs):
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
            task = int(getattr(self.train_streams[0][i], "task_label", 0))
            kd.after_experience(i, raw, task, self.streams[0].classes_per_experience[i], net)

    def score(self) -> None:
        """Append each seed's accuracies on every test experience (a row of its matrix),
        scoring the EMA of its weights when ``eval_ema_half_life > 0``, as the runner does."""
        for s, (model, evaluator) in enumerate(zip(self.models, self.evaluators)):
            model.to(self.device)
            self.net.copy_into(s, model)
            if self.diverged_at[s] is None and not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                self.diverged_at[s] = len(self.matrices[s])
            if self.eval_ema is not None:
                trained_row, trained_task_row = evaluator.accuracies(model)
                self.trained_matrices[s][0].append(trained_row)
                self.trained_matrices[s][1].append(trained_task_row)
                self.net.copy_into(s, model, self.eval_ema.params)
            row, task_row = evaluator.accuracies(model)
            self.matrices[s].append(row)
            self.task_matrices[s].append(task_row)

    def records(self, wall: float, times: Sequence[float]) -> list[dict]:
        """One result record per seed, as :func:`ckd.benchmarking.runner.run` writes it, marked vectorized."""
        from ckd.benchmarking.runner import result_record

        n = len(self.configs)
        return [
            {
                **result_record(
                    config, stream, self.matrices[s], self.task_matrices[s],
                    scored_model="model" if self.eval_ema is None else "ema",
                    trained_weights=None if self.eval_ema is None else self.trained_matrices[s],
                    diverged_at=self.diverged_at[s],
                    curve=None,
                    diagnostics=None,
                    wall=wall / n,
                    times=[t / n for t in times],
                    iterations=self.iterations,
                    device=self.device,
                ),
                "vectorized": True,
                "vectorized_seeds": self.seeds,
                "vectorized_wall_time_s": wall,
            }
            for s, (config, stream) in enumerate(zip(self.configs, self.streams))
        ]


def run_vectorized(configs: Sequence, data_root: str | os.PathLike | None = None, progress: bool = False) -> list[dict]:
    """Train ``configs`` (one run per seed, otherwise equal) in one pass; one result
    record per config, in order, as :func:`ckd.benchmarking.runner.run` returns them.

    ``wall_time_s`` of each record is the pass's wall time divided by the number of
    seeds (``vectorized_wall_time_s``: the whole pass)."""
    training = VectorizedTraining(configs, data_root)
    first, device = training.first, training.device
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(training.iterations), desc=f"{first.stream} {first.name} seeds {training.seeds}",
                   unit="it", leave=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    start = time.perf_counter()
    try:
        for i in range(training.n_experiences):
            t0 = time.perf_counter()
            training.train_experience(i, on_iteration=None if bar is None else (lambda: bar.update(1)))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
            training.score()
    finally:
        if bar is not None:
            bar.close()
    return training.records(time.perf_counter() - start, times)


def _step(net: StackedModel, lr: float, kd: _StackedKD | None, x: Tensor, y: Tensor, t: Tensor) -> None:
    """One training iteration of every seed: ``x (S, b, ...)``, ``y, t (S, b)``; the update is
    ``torch.optim.SGD``'s without momentum (its ``foreach`` arithmetic, without its per-call
    bookkeeping, which one stacked step pays once where sequential runs pay it per seed)."""
    replay = kd.sample() if kd is not None and kd.replays() else None
    inputs = x if replay is None else torch.cat([x, replay["x"]], dim=1)
    out = net(inputs)
    if replay is None:
        loss, kd_term = _summed_loss(out, y, None, None, None, 0.0, 0.0, 1.0)
    else:
        target, mask = kd.targets(replay, net)
        loss, kd_term = _summed_loss(out, y, replay["y"], target, mask, kd.alpha, kd.beta, kd.temperature)
        if kd_term is not None:
            kd.note_finite(kd_term)
    params = net.tensors
    for p in params:
        p.grad = None
    loss.backward()
    with torch.no_grad():
        torch._foreach_add_(params, [p.grad for p in params], alpha=-lr)


def run_vectorized_to_files(
    configs: Sequence,
    out_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    progress: bool = False,
    skip_existing: bool = True,
) -> list[tuple[Path, bool]]:
    """:func:`run_vectorized` writing each seed's ``ckd.benchmarking.runner.result_path`` (atomically);
    with ``skip_existing``, seeds whose result exists with the same config are not re-run
    (the others still run together). Returns ``(path, ran)`` per config."""
    import json

    from ckd.benchmarking.runner import result_path
    from ckd.common.files import write_json_atomic

    paths = [result_path(out_dir, c) for c in configs]
    todo = []
    for config, path in zip(configs, paths):
        if skip_existing and path.exists():
            try:
                existing = json.loads(path.read_text())
            except (json.JSONDecodeError, OSError):
                existing = None
            if existing is not None and existing.get("config") == json.loads(json.dumps(config.resolved())):
                continue
        todo.append(config)
    if todo:
        for config, record in zip(todo, run_vectorized(todo, data_root=data_root, progress=progress)):
            write_json_atomic(result_path(out_dir, config), record)
    ran = {id(c) for c in todo}
    return [(path, id(config) in ran) for config, path in zip(configs, paths)]
