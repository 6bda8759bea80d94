"""Replay with distillation for ``S`` seeds at once: each seed's buffer and teacher, stacked,
and the seeds' losses summed so that each seed's gradient is its sequential run's."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ckd.distillation.buffer import ReplayBuffer, StackedBuffers
from ckd.distillation.ema import decay_for_half_life
from ckd.distillation.known_classes import ClassMasks, grow_seen_classes, only_taught
from ckd.distillation.losses import summed_soft_kl, weighted
from ckd.distillation.teachers import DEFAULT_TEACHER
from ckd.engines.stacked_model import StackedModel

__all__ = ["StackedEMA", "StackedKD", "summed_loss"]

_LOGIT_TEACHERS = ("cached", "own")  # logits kept in the buffer: refreshed every experience, or once per slot
# Batch of the once-per-experience passes over the buffer, as the KD plugin's.
_PASS_BATCH = 1000



class StackedEMA:
    """An exponential moving average of every seed's weights, stacked: as
    :class:`ckd.distillation.teachers.EMAWeights` (copied from the model when the first experience
    starts, ``λ`` set per experience from its steps, one ``lerp`` per iteration)."""

    def __init__(self, half_life: float) -> None:
        self.half_life = half_life
        self.decay = 0.0
        self.params: dict[str, Tensor] | None = None

    def start_experience(self, net: "StackedModel", steps: int) -> None:
        self.decay = decay_for_half_life(self.half_life, steps)
        if self.params is None:
            self.params = net.detached()

    @torch.no_grad()
    def update(self, net: "StackedModel") -> None:
        live = net.param_dict()
        torch._foreach_lerp_([self.params[k] for k in net.names], [live[k].detach() for k in net.names], 1.0 - self.decay)


class StackedKD:
    """Replay with distillation for ``S`` seeds: one :class:`ReplayBuffer` per seed
    (its own generator), the teacher as stacked parameters or cached logits."""

    def __init__(self, method: str, args: dict[str, Any], seeds: Sequence[int], device: torch.device) -> None:
        self.args = args
        self.teacher = "cached" if method == "kd-replay-cached" else args.get("teacher", DEFAULT_TEACHER)
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
        self.teacher_masks: ClassMasks | None = None  # the classes the teacher knows
        self.cover_all = False
        self.has_logits = False
        self.alpha = 0.0
        self.ema = StackedEMA(args["ema_half_life"]) if self.teacher == "ema" else None
        self._kd_total: Tensor | None = None  # the epoch's KD terms summed: NaN/inf once any is

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
        self.seen = grow_seen_classes(self.seen, task, classes)
        self.finished = exp
        if self.policy == "class_balanced" and self.uses_replay:
            for buffer, samples in zip(self.buffers, data):
                buffer.class_balanced_refill(samples[1], exp, functools.partial(_rows, samples))
        if self.teacher == "snapshot":
            self.teacher_params = net.detached()
            self.teacher_masks = ClassMasks(self.seen.clone())
            if self.snapshot_targets_kept and self.uses_replay and not self.buffers[0].is_empty:
                # The snapshot's logits for every slot, gathered by each step instead of a teacher
                # forward: the snapshot is frozen and, within an experience, a slot changes only by
                # taking a sample of that experience, which gets no target (a class-balanced buffer
                # does not change at all).
                self._cache_logits(net, only_new=False)
        elif self.teacher == "ema":
            self.teacher_params = self.ema.params  # live: the average goes on moving
            self.teacher_masks = ClassMasks(self.seen.clone())
        elif self.uses_replay and not self.buffers[0].is_empty:
            self._cache_logits(net, only_new=self.teacher == "own")

    @torch.no_grad()
    def _cache_logits(self, net: StackedModel, only_new: bool) -> None:
        """Each seed's logits (the model as it is now) for its buffer slots (``only_new``: the
        slots without any yet, as the own-experience teacher keeps them), as a cached teacher's."""
        masks = ClassMasks(self.seen)
        for s, buffer in enumerate(self.buffers):
            def logits_of(rows, s=s):
                logits = net.seed_forward(s, rows.x)
                return logits, self._mask(masks, rows.task, logits.shape[-1])
            buffer.cache_logits(logits_of, only_new=only_new, batch_size=_PASS_BATCH)
        self.has_logits = True
        self.cover_all = all(bool(b.logits_mask.all()) for b in self.buffers)  # one sync per experience

    def _mask(self, masks: ClassMasks, task: Tensor, width: int) -> Tensor | None:
        """bool ``(..., width)``: the classes the teacher knew for each row's task
        (``None``: every output, as ``known_classes_only=False`` gives)."""
        return masks(task, width, True) if self.known_only else None

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
        mask = self._mask(self.teacher_masks, replay.get("task"), logits.shape[-1])
        if self.taught_only:
            mask = only_taught(mask, replay["experience"], self.finished, logits)
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


def _rows(samples: tuple[Tensor, Tensor, Tensor], index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The rows ``index`` of an experience's ``(x, y, t)``."""
    index = index.to(samples[0].device)
    return tuple(part[index] for part in samples)


@functools.lru_cache(maxsize=64)
def _row_weights(n: int, replayed: int, beta: float, device: torch.device) -> Tensor:
    """``(n + replayed,)``: each row's weight in its seed's loss, ``1/n`` for a current row (the
    criterion's mean) and ``β/R`` for a replayed one (the replay cross-entropy's)."""
    weights = torch.full((n + replayed,), 1.0 / n, device=device)  # filled on the device: no host copy
    if replayed:
        weights[n:] = beta / replayed
    return weights


def summed_loss(
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
        kd = summed_soft_kl(out[:, n:], target, temperature, mask)
        loss = loss + weighted(alpha, kd)
    return loss, kd
