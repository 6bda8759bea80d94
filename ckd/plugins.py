"""Avalanche plugins: knowledge distillation from a frozen teacher on replayed samples."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from avalanche.core import SupervisedPlugin
from avalanche.models.dynamic_modules import MultiTaskModule
from avalanche.models.utils import avalanche_forward
from torch import Tensor

from ckd.buffer import POLICIES, ReplayBuffer, ReplaySample
from ckd.losses import check_temperature, replay_cross_entropy, soft_kl
from ckd.teacher import ENSEMBLES, Teacher, TeacherSet

__all__ = ["KDReplayConfig", "KDReplayPlugin", "ReplayStep", "TEACHER_MODES"]

TEACHER_MODES = ("snapshot", "cached", "own")
# Batch of the once-per-experience passes (buffer refill, logit caching): independent of
# the strategy's eval_mb_size, which Avalanche defaults to 1.
_PASS_BATCH = 1000


@dataclass(frozen=True)
class KDReplayConfig:
    """Settings of :class:`KDReplayPlugin`.

    mem_size: replay memory slots. alpha: weight of the soft KL term on replayed
    samples. temperature: softmax temperature T (the loss carries T²). beta:
    weight of the hard-label cross-entropy on replayed samples.
    replay_batch_size: replayed samples added to each training minibatch.
    policy: ``class_balanced`` (refilled after each experience) or ``reservoir``
    (updated every minibatch). teacher: ``snapshot`` (run the frozen model on
    each replay batch), ``cached`` (store its logits for the whole buffer after
    each experience) or ``own`` (each sample keeps the logits of the snapshot
    taken at the end of its own experience: computed once, never refreshed). seed: the buffer's random generator.
    known_classes_only: distil only the classes the teacher had been trained on
    (per task); with False, all of the teacher's outputs (see :class:`Teacher`).
    current_alpha: weight of a soft KL on the *current* samples against the
    teacher, restricted to the classes it knew (LwF, Li & Hoiem 2016, with the
    T² factor); needs ``teacher="snapshot"``. With ``alpha = beta = 0`` the plugin
    keeps no buffer and is plain LwF. ``alpha`` and ``current_alpha`` may also be
    one value per experience (the value used while training experience ``i`` is
    ``[i]``), as Avalanche's LwF takes them.
    n_teachers: how many snapshots to keep (the last ``n_teachers`` experiences);
    with more than one, ``ensemble`` says how a replayed sample gets its target:
    ``own`` from the teacher that finished the sample's experience, ``average``
    from the mean of the softened probabilities of the teachers trained on it
    (:class:`ckd.teacher.TeacherSet`). Needs ``teacher="snapshot"``;
    ``teacher="own"`` is the stored-logits form of the ``own`` ensemble.
    current_classes_only: the strategy's loss on the current samples sees only
    the logits of the current experience's classes, so learning new classes
    does not push the old ones down (the asymmetric cross-entropy of ER-ACE,
    Caccia et al., 2022). Replayed samples keep the whole head.
    """

    mem_size: int = 500
    alpha: float | tuple[float, ...] = 1.0
    temperature: float = 2.0
    replay_batch_size: int = 32
    beta: float = 0.0
    policy: str = "class_balanced"
    teacher: str = "snapshot"
    seed: int = 0
    known_classes_only: bool = True
    current_classes_only: bool = False
    current_alpha: float | tuple[float, ...] = 0.0
    n_teachers: int = 1
    ensemble: str = "own"

    def __post_init__(self) -> None:
        if not isinstance(self.mem_size, int) or self.mem_size < 1:
            raise ValueError(f"mem_size must be an integer >= 1, got {self.mem_size!r}")
        if not isinstance(self.replay_batch_size, int) or self.replay_batch_size < 1:
            raise ValueError(f"replay_batch_size must be an integer >= 1, got {self.replay_batch_size!r}")
        check_temperature(self.temperature)
        for name in ("alpha", "current_alpha"):
            value = getattr(self, name)
            if isinstance(value, Sequence) and not isinstance(value, str):
                if len(value) == 0:
                    raise ValueError(f"{name} as a per-experience list must not be empty")
                object.__setattr__(self, name, tuple(float(v) for v in value))
        for name in ("alpha", "beta", "current_alpha"):
            for value in _as_tuple(getattr(self, name)):
                if not value >= 0:  # also rejects NaN
                    raise ValueError(f"{name} must be >= 0, got {value}")
        if max(_as_tuple(self.current_alpha)) > 0 and self.teacher != "snapshot":
            raise ValueError(f"current_alpha > 0 needs teacher='snapshot', got teacher={self.teacher!r}")
        if not isinstance(self.n_teachers, int) or self.n_teachers < 1:
            raise ValueError(f"n_teachers must be an integer >= 1, got {self.n_teachers!r}")
        if self.n_teachers > 1 and self.teacher != "snapshot":
            raise ValueError(
                f"n_teachers > 1 needs teacher='snapshot', got teacher={self.teacher!r} "
                "(teacher='own' already keeps each sample's own-teacher logits, with no model stored)"
            )
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {self.ensemble!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.teacher not in TEACHER_MODES:
            raise ValueError(f"teacher must be one of {TEACHER_MODES}, got {self.teacher!r}")

    def weight(self, name: str, experience: int) -> float:
        """``alpha`` or ``current_alpha`` while training ``experience``."""
        value = getattr(self, name)
        if not isinstance(value, tuple):
            return value
        if experience >= len(value):
            raise ValueError(
                f"{name} has {len(value)} per-experience values but experience {experience} is being "
                f"trained; give one value per experience of the stream"
            )
        return value[experience]


def _as_tuple(value: float | tuple[float, ...]) -> tuple[float, ...]:
    return value if isinstance(value, tuple) else (value,)


@dataclass
class ReplayStep:
    """What the plugin replayed in the current training iteration.

    rows: the replayed rows of the step's forward batch (current samples come
    first); sample: what was drawn from the buffer; student_logits ``(R, C)``.
    """

    rows: slice
    sample: ReplaySample
    student_logits: Tensor | None = None


class KDReplayPlugin(SupervisedPlugin):
    """Replay with soft-target distillation from the model of the previous experience.

    Each training iteration, once the buffer holds samples, ``replay_batch_size``
    of them join the minibatch in the same forward pass, and the plugin adds
    ``alpha · soft_kl(student, teacher, T)`` (restricted to the classes the
    teacher knew for each sample's task) plus ``beta · CE`` to ``strategy.loss``.
    The strategy's own criterion still sees only the current samples.
    After each training experience the model is snapshotted as the teacher.

    ``replay`` holds the :class:`ReplayStep` of the current iteration (``None``
    when nothing was replayed), for other plugins to read.

    A non-finite distillation loss raises ``FloatingPointError`` at the end of
    the epoch in which it happened (checked once per epoch to keep the training
    step free of host-device syncs).
    """

    def __init__(
        self,
        mem_size: int = 500,
        alpha: float = 1.0,
        temperature: float = 2.0,
        replay_batch_size: int = 32,
        beta: float = 0.0,
        policy: str = "class_balanced",
        teacher: str = "snapshot",
        seed: int = 0,
        known_classes_only: bool = True,
        current_classes_only: bool = False,
        current_alpha: float | Sequence[float] = 0.0,
        n_teachers: int = 1,
        ensemble: str = "own",
    ) -> None:
        super().__init__()
        self.config = KDReplayConfig(
            mem_size, alpha, temperature, replay_batch_size, beta, policy, teacher, seed,
            known_classes_only, current_classes_only, current_alpha, n_teachers, ensemble,
        )
        self._uses_replay = max(_as_tuple(self.config.alpha)) > 0 or self.config.beta > 0
        self.buffer: ReplayBuffer | None = None
        self.teachers = TeacherSet(self.config.n_teachers)
        self._alpha = 0.0
        self._current_alpha = 0.0
        # bool (n_tasks, C): classes trained on so far, per task label.
        self.seen_classes = torch.zeros(0, 0, dtype=torch.bool)
        self.replay: ReplayStep | None = None
        self._current: tuple[Tensor, Tensor, Tensor] | None = None
        self._finite: Tensor | None = None
        self._current_classes: Tensor | None = None
        self._cached_logits_cover_all = False
        self._current_logits: Tensor | None = None

    @property
    def teacher(self) -> Teacher | None:
        """The snapshot taken after the latest experience (``None`` before one ended)."""
        return self.teachers.latest

    # ------------------------------------------------------------- experience
    def before_training_exp(self, strategy, **kwargs) -> None:
        device = torch.device(strategy.device)
        exp_id = strategy.experience.current_experience
        self._alpha = self.config.weight("alpha", exp_id)
        self._current_alpha = self.config.weight("current_alpha", exp_id)
        if self.buffer is None:
            self.buffer = ReplayBuffer(self.config.mem_size, self.config.policy, device, self.config.seed)
        self.buffer.to(device)
        self.teachers.to(device)
        self._finite = torch.ones((), dtype=torch.bool, device=device)
        classes = torch.as_tensor(list(strategy.experience.classes_in_this_experience), dtype=torch.long)
        self._current_classes = classes.to(device)

    def after_training_exp(self, strategy, **kwargs) -> None:
        experience = strategy.experience
        exp_id = experience.current_experience
        self._mark_seen(experience)
        if self.config.policy == "class_balanced" and self._uses_replay:
            self._refill_class_balanced(strategy, exp_id)
        model = strategy.model
        self.teachers.make_room()  # release the oldest snapshot before copying
        teacher = Teacher(
            model,
            self.seen_classes,
            avalanche_forward,
            multi_task=isinstance(model, MultiTaskModule),
            known_classes_only=self.config.known_classes_only,
        )
        self.teachers.add(teacher, exp_id)
        if self.config.teacher in ("cached", "own") and self._uses_replay:
            self._cache_teacher_logits(_PASS_BATCH, only_new=self.config.teacher == "own")
            self.teachers.clear()  # its logits are all the plugin needs
            # One sync per experience; a reservoir write invalidates a slot and resets it.
            self._cached_logits_cover_all = bool(self.buffer.logits_mask.all())

    def after_training_epoch(self, strategy, **kwargs) -> None:
        if self._finite is not None and not bool(self._finite):
            raise FloatingPointError(
                f"the distillation loss became NaN or infinite in experience "
                f"{strategy.experience.current_experience} (config {asdict(self.config)}); "
                "lower the learning rate or alpha"
            )

    # ------------------------------------------------------------- iteration
    def before_forward(self, strategy, **kwargs) -> None:
        self.replay = None
        x, y, t = strategy.mbatch[0], strategy.mbatch[1], strategy.mbatch[2]
        self._current = (x, y, t)
        if self.buffer is None or self.buffer.is_empty or not self._replay_has_a_loss():
            return
        sample = self.buffer.sample(self.config.replay_batch_size)
        n = x.shape[0]
        strategy.mbatch[0] = torch.cat([x, sample.x])
        strategy.mbatch[1] = torch.cat([y, sample.y.to(y.dtype)])
        strategy.mbatch[2] = torch.cat([t, sample.task.to(t.dtype)])
        self.replay = ReplayStep(rows=slice(n, n + sample.x.shape[0]), sample=sample)

    def after_forward(self, strategy, **kwargs) -> None:
        if self.replay is not None:
            n = self.replay.rows.start
            self.replay.student_logits = strategy.mb_output[self.replay.rows]
            strategy.mb_output = strategy.mb_output[:n]
            for i, current in enumerate(self._current):
                strategy.mbatch[i] = current
        self._current_logits = strategy.mb_output
        if self.config.current_classes_only and self.teacher_or_logits_exist():
            out = strategy.mb_output
            keep = torch.zeros(out.shape[1], dtype=torch.bool, device=out.device)
            keep[self._current_classes[self._current_classes < out.shape[1]]] = True
            strategy.mb_output = out.masked_fill(~keep, torch.finfo(out.dtype).min / 4)

    def before_backward(self, strategy, **kwargs) -> None:
        cfg, step = self.config, self.replay
        if self._current_alpha > 0 and self.teacher is not None:
            x, _, t = self._current
            teacher_logits, _ = self.teacher.logits(x, t)
            mask = self.teacher.known_class_mask(t, teacher_logits.shape[1])
            lwf = soft_kl(self._current_logits, teacher_logits, cfg.temperature, mask)
            self._finite &= torch.isfinite(lwf)
            strategy.loss += self._current_alpha * lwf
        if step is None:
            return
        if self._alpha > 0:
            teacher_logits, mask = self._soft_targets(step.sample)
            if teacher_logits is not None:
                kd = soft_kl(step.student_logits, teacher_logits, cfg.temperature, mask)
                self._finite &= torch.isfinite(kd)
                strategy.loss += self._alpha * kd
        if cfg.beta > 0:
            strategy.loss += cfg.beta * replay_cross_entropy(step.student_logits, step.sample.y)

    def after_training_iteration(self, strategy, **kwargs) -> None:
        if self.config.policy == "reservoir" and self._uses_replay and self._current is not None:
            x, y, t = self._current
            self.buffer.reservoir_add(x, y, t, strategy.experience.current_experience)
            self._cached_logits_cover_all = False
        self._current = None

    def memory_bytes(self) -> dict[str, int]:
        """What the plugin keeps between experiences: ``buffer`` (samples, labels,
        cached logits) and ``teachers`` (the stored snapshots), in bytes."""
        return {
            "buffer": 0 if self.buffer is None else self.buffer.nbytes,
            "teachers": sum(t.nbytes for t in self.teachers.teachers),
        }

    # --------------------------------------------------------------- helpers
    def teacher_or_logits_exist(self) -> bool:
        """Whether an experience has ended, i.e. there are old classes to protect."""
        return self.teacher is not None or (self.buffer is not None and self.buffer.logits is not None)

    def _replay_has_a_loss(self) -> bool:
        return self.config.beta > 0 or (self._alpha > 0 and self.teacher_or_logits_exist())

    def _soft_targets(self, sample: ReplaySample) -> tuple[Tensor | None, Tensor | None]:
        if self.config.teacher in ("cached", "own"):
            # Every cached row covers every class: skip the masking work in the step.
            return sample.logits, None if self._cached_logits_cover_all else sample.logits_mask
        if self.teacher is None:
            return None, None
        if len(self.teachers) > 1:
            return self.teachers.soft_targets(
                sample.x, sample.task, sample.experience, self.config.temperature, self.config.ensemble
            )
        return self.teacher.logits(sample.x, sample.task)

    def _mark_seen(self, experience) -> None:
        task = int(experience.task_label) if hasattr(experience, "task_label") else 0
        classes = [int(c) for c in experience.classes_in_this_experience]
        n_tasks = max(self.seen_classes.shape[0], task + 1)
        n_classes = max(self.seen_classes.shape[1], max(classes) + 1)
        seen = torch.zeros(n_tasks, n_classes, dtype=torch.bool)
        seen[: self.seen_classes.shape[0], : self.seen_classes.shape[1]] = self.seen_classes
        seen[task, classes] = True
        self.seen_classes = seen

    def _refill_class_balanced(self, strategy, exp_id: int) -> None:
        dataset = strategy.experience.dataset.eval()
        targets = torch.as_tensor(list(dataset.targets), dtype=torch.long)
        plan = self.buffer.class_balanced_select(targets, exp_id)
        index = plan.index.cpu()
        if index.numel():
            x, y, t = _load(dataset.subset(index.tolist()), _PASS_BATCH)
        elif self.buffer.is_empty:
            return
        else:  # nothing new to keep; old groups still shrink to their quota
            x, y, t = self.buffer.x[:0], self.buffer.y[:0], self.buffer.task[:0]
        self.buffer.class_balanced_fill(plan, x, y, t, exp_id)

    def _cache_teacher_logits(self, batch_size: int, only_new: bool = False) -> None:
        """Batched teacher passes over the buffer (``only_new``: the slots with no logits yet)."""
        buf = self.buffer
        slots = torch.arange(len(buf), device=buf.device)
        if only_new and buf.logits_mask is not None:
            slots = (~buf.logits_mask.any(dim=1)).nonzero().squeeze(1)
        for start in range(0, slots.shape[0], batch_size):
            index = slots[start : start + batch_size]
            rows = buf.gather(index)
            logits, mask = self.teacher.logits(rows.x, rows.task)
            if mask is None:
                mask = torch.ones_like(logits, dtype=torch.bool)
            buf.set_logits(index, logits, mask)


def _load(dataset, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """All ``(x, y, task)`` of a (small) Avalanche dataset as tensors."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=max(batch_size, 1), shuffle=False)
    xs, ys, ts = [], [], []
    for batch in loader:
        xs.append(batch[0])
        ys.append(batch[1])
        ts.append(batch[2])
    return torch.cat(xs), torch.cat(ys), torch.cat(ts)
