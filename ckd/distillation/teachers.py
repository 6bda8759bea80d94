"""Teachers: where a replayed sample's soft targets come from.

A teacher is a small object with one interface, driven by
:class:`ckd.distillation.plugin.KDReplayPlugin` (or any caller):

- ``bind(forward, multi_task)``: how to call the model (once, before training);
- ``before_training_exp(model, steps)``: an experience of ``steps`` iterations starts;
- ``after_training_iteration(model)``: the optimizer has stepped;
- ``after_training_exp(model, known_classes, buffer)``: the experience has ended;
- ``soft_targets(sample, x)``: target logits ``(R, C_t)`` and class mask ``(R, C_t)``
  (``None``: every output) for the replayed rows ``x`` drawn as ``sample``.

Offline teachers are frozen at the end of an experience (:class:`SnapshotTeacher`,
:class:`EnsembleTeacher`) or keep the logits such a snapshot gave
(:class:`CachedTeacher`, :class:`OwnExperienceTeacher`); the online
:class:`EMATeacher` trains alongside the student as an exponential moving average
of its weights; :class:`TrainedTeacher` is a model trained beforehand. Nothing
here imports Avalanche.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn

from ckd.distillation.buffer import ReplayBuffer, ReplaySample
from ckd.distillation.devices import to_device
from ckd.distillation.losses import average_soft_targets

__all__ = [
    "ENSEMBLES",
    "TEACHERS",
    "CachedTeacher",
    "EMATeacher",
    "EMAWeights",
    "EnsembleTeacher",
    "FrozenModel",
    "OwnExperienceTeacher",
    "SnapshotTeacher",
    "TeacherSet",
    "TrainedTeacher",
    "decay_for_half_life",
    "default_forward",
    "make_teacher",
]

ENSEMBLES = ("own", "average")

ForwardFn = Callable[[nn.Module, Tensor, Tensor], Tensor]

# Batch of the once-per-experience passes over the buffer (logit caching).
_PASS_BATCH = 1000


def default_forward(model: nn.Module, x: Tensor, task: Tensor) -> Tensor:
    return model(x)


class FrozenModel:
    """A deep copy of ``model`` in ``eval()`` mode with gradients off, queried for logits.

    known_classes: bool ``(n_tasks, C)``: the classes the model had been trained
    on, per task label. With a fixed single head every output is a target (its low
    scores for classes it never saw tell the student to keep them low); a head that
    grew since the snapshot is cut to the teacher's width by the loss. A multi-head
    model gives targets on the head of each sample's task, and none to samples of a
    task it never saw. ``known_classes_only`` restricts targets to the known classes
    (the behaviour of ckd ≤ 0.1's default, kept to re-run old results).
    """

    def __init__(
        self,
        model: nn.Module,
        known_classes: Tensor,
        forward: ForwardFn = default_forward,
        multi_task: bool = False,
        known_classes_only: bool = False,
        copy_model: bool = True,
    ) -> None:
        self.model = copy.deepcopy(model) if copy_model else model
        self.model.eval().requires_grad_(False)
        self.known_classes = known_classes.clone().bool()
        self.forward = forward
        self.multi_task = multi_task
        self.known_classes_only = known_classes_only
        self._tables: dict = {}
        known = self.known_classes.any(dim=1).nonzero().flatten()
        self._any_known_task = int(known[0]) if known.numel() else 0

    @property
    def known_tasks(self) -> Tensor:
        """bool ``(n_tasks,)``: task labels with at least one known class."""
        return self.known_classes.any(dim=1)

    def class_mask(self, task: Tensor, num_classes: int) -> Tensor:
        """bool ``(B, num_classes)``: each sample's target classes (see the class doc)."""
        table = self._mask_table(num_classes, task.device, self.known_classes_only)
        return table[task.clamp_max(table.shape[0] - 1)]

    def known_class_mask(self, task: Tensor, num_classes: int) -> Tensor:
        """bool ``(B, num_classes)``: the classes the teacher was trained on for each
        sample's task (for distillation on new data, where other outputs say nothing)."""
        table = self._mask_table(num_classes, task.device, True)
        return table[task.clamp_max(table.shape[0] - 1)]

    def _mask_table(self, num_classes: int, device: torch.device, known_only: bool) -> Tensor:
        """bool ``(n_tasks + 1, num_classes)``; the last row (tasks never seen) is all False.
        Built once per width and device, so a training step only indexes it."""
        key = (num_classes, str(device), known_only)
        if key not in self._tables:
            known = self.known_classes
            table = torch.zeros(known.shape[0] + 1, num_classes, dtype=torch.bool)
            if known_only:
                width = min(num_classes, known.shape[1])
                table[:-1, :width] = known[:, :width]
            else:
                table[:-1] = known.any(dim=1, keepdim=True)
            self._tables[key] = to_device(table, device)  # built in a step: no host sync
        return self._tables[key]

    def logits(self, x: Tensor, task: Tensor) -> tuple[Tensor, Tensor | None]:
        """Target logits ``(B, C_t)`` and their class mask ``(B, C_t)`` (``None`` when
        every output of every sample is a target). Samples of a task the teacher has
        no head for get an all-False mask row."""
        original_task = task
        with torch.inference_mode():
            if self.multi_task:
                # Rows of tasks without a head run on some known head; the mask zeroes them.
                known = self._known_task_table(task.device)
                has_head = known[task.clamp_max(known.shape[0] - 1)]
                task = torch.where(has_head, task, torch.full_like(task, self._any_known_task))
            out = self.forward(self.model, x, task)
        # Leave inference mode: the targets enter an autograd graph as constants.
        out = out.clone()
        if not self.known_classes_only and not self.multi_task:
            return out, None  # every output of every sample is a target
        return out, self.class_mask(original_task, out.shape[1])

    def _known_task_table(self, device: torch.device) -> Tensor:
        """bool ``(n_tasks + 1,)``: tasks with a head; the last entry (unseen tasks) False."""
        key = ("tasks", str(device))
        if key not in self._tables:
            self._tables[key] = to_device(torch.cat([self.known_tasks, torch.zeros(1, dtype=torch.bool)]), device)
        return self._tables[key]

    @property
    def nbytes(self) -> int:
        """Bytes of the snapshot's parameters and buffers."""
        return _model_nbytes(self.model)

    def to(self, device: torch.device | str) -> "FrozenModel":
        self.model.to(device)
        self._tables = {}
        return self

    def state_dict(self) -> dict:
        """The frozen module itself (its class and weights), its known classes and how it is called."""
        return {
            "model": self.model, "known_classes": self.known_classes, "forward": self.forward,
            "multi_task": self.multi_task, "known_classes_only": self.known_classes_only,
        }

    @classmethod
    def from_state(cls, state: dict) -> "FrozenModel":
        return cls(state["model"], state["known_classes"], state["forward"], state["multi_task"],
                   state["known_classes_only"], copy_model=False)


def _frozen_state(model: FrozenModel | None) -> dict | None:
    return None if model is None else model.state_dict()


def _frozen_from(state: dict | None) -> FrozenModel | None:
    return None if state is None else FrozenModel.from_state(state)


def _model_nbytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


class TeacherSet:
    """The snapshots taken after the last ``size`` experiences, each tagged with the
    experience it finished (oldest first).

    Memory: ``size`` copies of the model's parameters and buffers (for the
    784-100-100-10 MLP, 89,610 floats = 350 KiB each).
    """

    def __init__(self, size: int) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"n_teachers must be an integer >= 1, got {size!r}")
        self.size = size
        self.teachers: list[FrozenModel] = []
        self.experiences: list[int] = []
        self._finished: Tensor | None = None  # ``experiences`` on the device, built once per change

    def __len__(self) -> int:
        return len(self.teachers)

    @property
    def latest(self) -> FrozenModel | None:
        return self.teachers[-1] if self.teachers else None

    def make_room(self) -> None:
        """Drop the oldest snapshots so that one more fits (before copying the model)."""
        while len(self.teachers) >= self.size:
            self.teachers.pop(0)
            self.experiences.pop(0)
            self._finished = None

    def add(self, teacher: FrozenModel, experience: int) -> None:
        self.make_room()
        self.teachers.append(teacher)
        self.experiences.append(int(experience))
        self._finished = None

    def clear(self) -> None:
        self.teachers.clear()
        self.experiences.clear()
        self._finished = None

    def to(self, device: torch.device | str) -> "TeacherSet":
        for teacher in self.teachers:
            teacher.to(device)
        return self

    def soft_targets(
        self, x: Tensor, task: Tensor, experience: Tensor, temperature: float, ensemble: str = "own"
    ) -> tuple[Tensor, Tensor]:
        """Soft-target logits ``(B, C)`` and class mask ``(B, C)`` for samples of
        ``experience (B,)``.

        ``own``: each sample gets the logits of the teacher that finished the
        sample's experience (the oldest one kept when that snapshot was dropped;
        the newest for samples of the experience being learned).
        ``average``: the mean of the softened probabilities of every kept teacher
        that was trained on the sample's experience (:func:`average_soft_targets`),
        over the union of their known classes.

        Every kept teacher runs on the whole batch (``K`` forwards, no host sync).
        """
        if not self.teachers:
            raise RuntimeError("no teacher yet: the first experience has not ended")
        if ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
        outputs = [teacher.logits(x, task) for teacher in self.teachers]
        width = max(out.shape[1] for out, _ in outputs)
        logits = x.new_zeros(len(outputs), x.shape[0], width, dtype=outputs[-1][0].dtype)
        masks = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
        for k, (out, mask) in enumerate(outputs):  # heads may have grown between snapshots
            logits[k, :, : out.shape[1]] = out
            masks[k, :, : out.shape[1]] = True if mask is None else mask
        if self._finished is None or self._finished.device != experience.device:
            self._finished = to_device(torch.as_tensor(self.experiences), experience.device)  # once per experience
        finished = self._finished
        if ensemble == "own":
            pick = torch.searchsorted(finished, experience.contiguous()).clamp_max(len(self) - 1)
            rows = torch.arange(x.shape[0], device=x.device)
            return logits[pick, rows], masks[pick, rows]
        taught = finished.unsqueeze(0) >= experience.unsqueeze(1)  # (B, K): trained on it
        taught[:, -1] |= ~taught.any(dim=1)  # samples of the current experience: the newest
        weights = taught.float() / taught.sum(dim=1, keepdim=True)
        masks = masks & taught.t().unsqueeze(2)
        return average_soft_targets(logits, weights, temperature, masks), masks.any(dim=0)


# ----------------------------------------------------------------- teachers
class _Teacher:
    """What every teacher shares: how to call the model, and no-op hooks."""

    name = ""
    forward: ForwardFn = staticmethod(default_forward)
    multi_task = False

    def bind(self, forward: ForwardFn, multi_task: bool) -> None:
        self.forward = forward
        self.multi_task = multi_task

    def before_training_exp(self, model: nn.Module, steps: int) -> None:
        pass

    def after_training_iteration(self, model: nn.Module) -> None:
        pass

    def after_training_exp(self, model: nn.Module, known_classes: Tensor, buffer: ReplayBuffer | None) -> None:
        pass

    @property
    def ready(self) -> bool:
        """Whether there is something to distil from (an experience has ended)."""
        raise NotImplementedError

    @property
    def model(self) -> FrozenModel | None:
        """The model giving the targets now (``None`` for teachers that keep logits)."""
        return None

    def soft_targets(self, sample: ReplaySample, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes of the models the teacher keeps between experiences."""
        return 0

    def to(self, device: torch.device | str) -> None:
        pass

    def state_dict(self) -> dict:
        """What the teacher keeps between experiences (how it calls the model, and each
        teacher's own: its snapshots, EMA weights, counters), for a checkpoint."""
        return {"forward": self.forward, "multi_task": self.multi_task}

    def load_state_dict(self, state: dict) -> None:
        self.bind(state["forward"], state["multi_task"])

    def _freeze(self, model: nn.Module, known_classes: Tensor, known_classes_only: bool = False) -> FrozenModel:
        return FrozenModel(model, known_classes, self.forward, self.multi_task, known_classes_only)


def _only_taught(sample: ReplaySample, logits: Tensor, mask: Tensor | None, finished: int) -> tuple[Tensor, Tensor]:
    """Targets only for samples of experiences ``≤ finished``: a frozen teacher knows
    nothing about the samples of the experience being learned (a reservoir holds some),
    and pulling them towards its outputs fights learning them. No host sync."""
    taught = (sample.experience <= finished).unsqueeze(1).expand_as(logits)
    return logits, taught if mask is None else mask & taught


class SnapshotTeacher(_Teacher):
    """The model frozen at the end of the latest experience, run on each replay batch;
    replayed samples of the experience being learned get no target (as with
    :class:`CachedTeacher`, whose slots written during an experience have no logits).
    ``current_experience_targets=True`` gives them the snapshot's outputs too (as ckd
    0.1 did; kept to re-run old results)."""

    name = "snapshot"

    def __init__(self, known_classes_only: bool = False, current_experience_targets: bool = False) -> None:
        self.known_classes_only = known_classes_only
        self.current_experience_targets = current_experience_targets  # ckd <= 0.1's behaviour
        self._model: FrozenModel | None = None
        self._finished = -1

    @property
    def ready(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> FrozenModel | None:
        return self._model

    def after_training_exp(self, model, known_classes, buffer) -> None:
        self._model = None  # release the old snapshot before copying
        self._model = self._freeze(model, known_classes, self.known_classes_only)
        self._finished += 1

    def soft_targets(self, sample, x):
        logits, mask = self._model.logits(x, sample.task)
        if self.current_experience_targets:
            return logits, mask
        return _only_taught(sample, logits, mask, self._finished)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "model": _frozen_state(self._model), "finished": self._finished}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._model, self._finished = _frozen_from(state["model"]), state["finished"]

    @property
    def nbytes(self) -> int:
        return 0 if self._model is None else self._model.nbytes

    def to(self, device) -> None:
        if self._model is not None:
            self._model.to(device)


class CachedTeacher(_Teacher):
    """The snapshot's logits stored for every buffer slot after each experience; no
    teacher forward while training and no model kept. With a class-balanced buffer
    (written only between experiences) it gives the same targets as
    :class:`SnapshotTeacher`; with a reservoir, samples written during an experience
    have no logits (and no soft target) until it ends."""

    name = "cached"
    refresh = True

    def __init__(self, known_classes_only: bool = False) -> None:
        self.known_classes_only = known_classes_only
        self._cover_all = False
        self._has_logits = False

    @property
    def ready(self) -> bool:
        return self._has_logits

    def after_training_exp(self, model, known_classes, buffer) -> None:
        if buffer is None or buffer.is_empty:
            return
        frozen = self._freeze(model, known_classes, self.known_classes_only)
        slots = torch.arange(len(buffer), device=buffer.device)
        if not self.refresh and buffer.logits_mask is not None:
            slots = (~buffer.logits_mask.any(dim=1)).nonzero().squeeze(1)  # once per experience
        for start in range(0, slots.shape[0], _PASS_BATCH):
            index = slots[start : start + _PASS_BATCH]
            rows = buffer.gather(index)
            logits, mask = frozen.logits(rows.x, rows.task)
            buffer.set_logits(index, logits, torch.ones_like(logits, dtype=torch.bool) if mask is None else mask)
        self._has_logits = buffer.logits is not None
        # One sync per experience; a reservoir write invalidates a slot and resets it.
        self._cover_all = bool(buffer.logits_mask.all())

    def invalidate(self) -> None:
        """A slot was overwritten since the logits were cached (reservoir write)."""
        self._cover_all = False

    def soft_targets(self, sample, x):
        # Every cached row covers every class: skip the masking work in the step.
        return sample.logits, None if self._cover_all else sample.logits_mask

    def state_dict(self) -> dict:  # the logits live in the buffer
        return {**super().state_dict(), "has_logits": self._has_logits, "cover_all": self._cover_all}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._has_logits, self._cover_all = state["has_logits"], state["cover_all"]


class OwnExperienceTeacher(CachedTeacher):
    """Each slot keeps the logits of the snapshot taken at the end of its own
    experience: computed once, never refreshed (as DER keeps logits from insertion)."""

    name = "own"
    refresh = False


class EnsembleTeacher(_Teacher):
    """The snapshots of the last ``n_teachers`` experiences (:class:`TeacherSet`);
    ``ensemble="own"`` distils each sample from the teacher that finished its own
    experience, ``"average"`` from the mean of the softened probabilities of the kept
    teachers trained on it (at ``temperature``, set by the plugin). Samples of the
    experience being learned get no target, as with :class:`SnapshotTeacher`."""

    name = "ensemble"

    def __init__(
        self, n_teachers: int = 4, ensemble: str = "own", known_classes_only: bool = False,
        current_experience_targets: bool = False,
    ) -> None:
        if ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
        self.teachers = TeacherSet(n_teachers)
        self.ensemble = ensemble
        self.known_classes_only = known_classes_only
        self.current_experience_targets = current_experience_targets  # ckd <= 0.1's behaviour
        self.temperature = 1.0
        self._experience = 0

    @property
    def ready(self) -> bool:
        return len(self.teachers) > 0

    @property
    def model(self) -> FrozenModel | None:
        return self.teachers.latest

    def after_training_exp(self, model, known_classes, buffer) -> None:
        self.teachers.make_room()  # release the oldest snapshot before copying
        self.teachers.add(self._freeze(model, known_classes, self.known_classes_only), self._experience)
        self._experience += 1

    def soft_targets(self, sample, x):
        if len(self.teachers) == 1:
            logits, mask = self.teachers.latest.logits(x, sample.task)
        else:
            logits, mask = self.teachers.soft_targets(x, sample.task, sample.experience, self.temperature, self.ensemble)
        if self.current_experience_targets:
            return logits, mask
        return _only_taught(sample, logits, mask, self._experience - 1)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.teachers.teachers)

    def to(self, device) -> None:
        self.teachers.to(device)

    def state_dict(self) -> dict:
        return {
            **super().state_dict(), "teachers": [t.state_dict() for t in self.teachers.teachers],
            "experiences": list(self.teachers.experiences), "experience": self._experience,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.teachers.clear()
        for teacher, experience in zip(state["teachers"], state["experiences"]):
            self.teachers.add(FrozenModel.from_state(teacher), experience)
        self._experience = state["experience"]


def decay_for_half_life(half_life: float, steps: int) -> float:
    """The per-step EMA decay ``λ`` whose half-life is ``half_life · steps`` steps:
    ``λ = 0.5 ** (1 / (half_life · steps))``."""
    if not half_life > 0:
        raise ValueError(f"half_life must be > 0, got {half_life}")
    return 0.5 ** (1.0 / max(half_life * max(steps, 1), 1e-12))


class EMAWeights:
    """An exponential moving average of a model's weights: ``θ_e ← λ·θ_e + (1−λ)·θ``
    after every update, on the device, without host syncs.

    ``half_life`` is a fraction of an experience's training iterations (so it
    transfers across streams and batch sizes); ``λ`` is set per experience from its
    number of steps (:func:`decay_for_half_life`). ``update_probability < 1`` applies
    each update with that probability, as CLS-ER does (drawn on the device).
    Floating-point buffers (BatchNorm statistics) are averaged too; others are copied.
    """

    def __init__(self, half_life: float = 0.3, update_probability: float = 1.0, seed: int = 0) -> None:
        if not half_life > 0:
            raise ValueError(f"half_life must be > 0 (a fraction of an experience's steps), got {half_life}")
        if not 0 < update_probability <= 1:
            raise ValueError(f"update_probability must be in (0, 1], got {update_probability}")
        self.half_life = half_life
        self.update_probability = update_probability
        self.seed = seed
        self.decay = 0.0
        self.model: nn.Module | None = None
        self._pairs: tuple[list[Tensor], list[Tensor]] = ([], [])
        self._copies: tuple[list[Tensor], list[Tensor]] = ([], [])
        self._generator: torch.Generator | None = None

    def start_experience(self, model: nn.Module, steps: int) -> None:
        """Set ``λ`` for an experience of ``steps`` iterations and :meth:`pair` the average with ``model``."""
        self.decay = decay_for_half_life(self.half_life, steps)
        self.pair(model)

    def pair(self, model: nn.Module) -> None:
        """Pair the average with ``model``'s tensors: a copy of it at first; a new copy when the
        two differ in tensors or shapes (``model`` grew, or the average did while it was
        evaluated), keeping the average where they overlap (a grown head's old rows)."""
        live = model.state_dict()
        if self.model is None:
            self.model = copy.deepcopy(model).eval().requires_grad_(False)
        else:
            mine = self.model.state_dict()
            if mine.keys() != live.keys() or any(mine[k].shape != live[k].shape for k in live):
                grown = copy.deepcopy(model).eval().requires_grad_(False)
                for key, value in grown.state_dict().items():
                    old = mine.get(key)
                    if old is not None and old.dim() == value.dim():
                        overlap = tuple(slice(0, min(a, b)) for a, b in zip(old.shape, value.shape))
                        value[overlap] = old[overlap].to(value.device)
                self.model = grown
        device = next(iter(live.values())).device if live else torch.device("cpu")
        self.model.to(device)
        mine = self.model.state_dict()
        averaged = [k for k, v in live.items() if v.is_floating_point()]
        copied = [k for k, v in live.items() if not v.is_floating_point()]
        self._pairs = ([mine[k] for k in averaged], [live[k] for k in averaged])
        self._copies = ([mine[k] for k in copied], [live[k] for k in copied])
        if self.update_probability < 1 and (self._generator is None or self._generator.device != device):
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average towards the paired model's current weights."""
        ema, live = self._pairs
        if not ema:
            return
        weight = 1.0 - self.decay
        if self.update_probability < 1:
            draw = torch.rand((), generator=self._generator, device=ema[0].device)
            weight = (draw < self.update_probability).to(ema[0].dtype) * weight
            for e, p in zip(ema, live):
                e.lerp_(p, weight.to(e.dtype))
        else:
            torch._foreach_lerp_(ema, live, weight)
        if self._copies[0]:
            torch._foreach_copy_(*self._copies)

    @property
    def nbytes(self) -> int:
        return 0 if self.model is None else _model_nbytes(self.model)

    def state_dict(self) -> dict:
        """The averaged module itself (``None`` before training), ``λ`` and the update generator;
        the pairing with the live model is made again when the next experience starts."""
        generator = self._generator
        return {
            "model": self.model, "decay": self.decay,
            "generator": None if generator is None else (str(generator.device), generator.get_state()),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model, self.decay = state["model"], state["decay"]
        self._pairs, self._copies = ([], []), ([], [])
        self._generator = None
        if state["generator"] is not None:
            device, rng_state = state["generator"]
            self._generator = torch.Generator(device=device)
            self._generator.set_state(rng_state)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_pairs=([], []), _copies=([], []), _generator=self.state_dict()["generator"])  # torch < 2.3: no pickling of generators
        return state

    def __setstate__(self, state: dict) -> None:
        generator = state.pop("_generator")
        self.__dict__.update(state)
        self.load_state_dict({"model": self.model, "decay": self.decay, "generator": generator})


class EMATeacher(_Teacher):
    """Online distillation: the teacher is an exponential moving average of the
    student's weights (a "mean teacher"), updated after every training iteration
    (:class:`EMAWeights`). It is ready once the first experience has ended; its
    known classes are the ones trained so far."""

    name = "ema"

    def __init__(self, half_life: float = 0.3, update_probability: float = 1.0, seed: int = 0) -> None:
        self.weights = EMAWeights(half_life, update_probability, seed)
        self._frozen: FrozenModel | None = None
        self._known = torch.zeros(0, 0, dtype=torch.bool)

    @property
    def ready(self) -> bool:
        return self._frozen is not None

    @property
    def model(self) -> FrozenModel | None:
        return self._frozen

    def before_training_exp(self, model, steps) -> None:
        self.weights.start_experience(model, steps)
        if self._frozen is not None:
            self._frozen = FrozenModel(self.weights.model, self._known, self.forward, self.multi_task, copy_model=False)

    def after_training_iteration(self, model) -> None:
        self.weights.update()

    def after_training_exp(self, model, known_classes, buffer) -> None:
        self._known = known_classes.clone()
        self._frozen = FrozenModel(self.weights.model, self._known, self.forward, self.multi_task, copy_model=False)

    def soft_targets(self, sample, x):
        return self._frozen.logits(x, sample.task)

    @property
    def nbytes(self) -> int:
        return self.weights.nbytes

    def state_dict(self) -> dict:
        return {**super().state_dict(), "weights": self.weights.state_dict(), "known": self._known,
                "ready": self._frozen is not None}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.weights.load_state_dict(state["weights"])
        self._known = state["known"]
        self._frozen = None
        if state["ready"]:
            self._frozen = FrozenModel(self.weights.model, self._known, self.forward, self.multi_task, copy_model=False)


class TrainedTeacher(_Teacher):
    """A model trained beforehand, given as ``KDReplayPlugin(teacher=model)``: a frozen copy
    (``eval()`` mode, no gradients, queried under ``torch.inference_mode()``) that gives
    every replayed row its targets from the first experience on, and never changes.
    A multi-head model gives targets on the heads it was trained on."""

    name = "trained"

    def __init__(self, model: nn.Module) -> None:
        self._given = copy.deepcopy(model).eval().requires_grad_(False)
        self._model = FrozenModel(self._given, torch.ones(1, 1, dtype=torch.bool), copy_model=False)

    def bind(self, forward: ForwardFn, multi_task: bool) -> None:
        super().bind(forward, multi_task)
        heads = sorted(getattr(self._given, "known_train_tasks_labels", None) or [0]) if multi_task else [0]
        known = torch.zeros(max(heads) + 1, 1, dtype=torch.bool)
        known[heads] = True
        device = next(iter(self._given.parameters()), torch.empty(0)).device
        self._model = FrozenModel(self._given, known, forward, multi_task, copy_model=False).to(device)

    @property
    def ready(self) -> bool:
        return True

    @property
    def model(self) -> FrozenModel:
        return self._model

    def soft_targets(self, sample, x):
        return self._model.logits(x, sample.task)

    @property
    def nbytes(self) -> int:
        return self._model.nbytes

    def to(self, device) -> None:
        self._model.to(device)


# Names as ckd.distillation.config.TEACHER_NAMES lists them.
TEACHERS = {
    "snapshot": SnapshotTeacher,
    "cached": CachedTeacher,
    "own": OwnExperienceTeacher,
    "ensemble": EnsembleTeacher,
    "ema": EMATeacher,
}


def make_teacher(name: str, **settings) -> _Teacher:
    """A teacher by name (``TEACHERS``) with its own settings."""
    if name not in TEACHERS:
        raise ValueError(f"teacher must be one of {tuple(TEACHERS)} or a teacher object, got {name!r}")
    return TEACHERS[name](**settings)

