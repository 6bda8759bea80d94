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

import torch
from torch import Tensor, nn

from ckd.distillation.buffer import ReplayBuffer, ReplaySample
from ckd.distillation.ema import EMA_HALF_LIFE, EMAWeights
from ckd.distillation.frozen import (
    ENSEMBLES,
    ForwardFn,
    FrozenModel,
    TeacherSet,
    default_forward,
    frozen_from,
    frozen_state,
)
from ckd.distillation.known_classes import only_taught

__all__ = [
    "DEFAULT_TEACHER",
    "TEACHERS",
    "TEACHER_NAMES",
    "CachedTeacher",
    "EMATeacher",
    "EnsembleTeacher",
    "OwnExperienceTeacher",
    "SnapshotTeacher",
    "Teacher",
    "TrainedTeacher",
    "make_teacher",
]


# Batch of the once-per-experience passes over the buffer (logit caching).
_PASS_BATCH = 1000


# ----------------------------------------------------------------- teachers
class Teacher:
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


class SnapshotTeacher(Teacher):
    """The model frozen at the end of the latest experience, run on each replay batch;
    replayed samples of the experience being learned get no target (as with
    :class:`CachedTeacher`, whose slots written during an experience have no logits).
    ``current_experience_targets=True`` gives them the snapshot's outputs too (as ckd
    0.1 did; kept to re-run old results)."""

    name = "snapshot"

    def __init__(self, *, known_classes_only: bool = False, current_experience_targets: bool = False) -> None:
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
        return logits, only_taught(mask, sample.experience, self._finished, logits)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "model": frozen_state(self._model), "finished": self._finished}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._model, self._finished = frozen_from(state["model"]), state["finished"]

    @property
    def nbytes(self) -> int:
        return 0 if self._model is None else self._model.nbytes

    def to(self, device) -> None:
        if self._model is not None:
            self._model.to(device)


class CachedTeacher(Teacher):
    """The snapshot's logits stored for every buffer slot after each experience; no
    teacher forward while training and no model kept. With a class-balanced buffer
    (written only between experiences) it gives the same targets as
    :class:`SnapshotTeacher`; with a reservoir, samples written during an experience
    have no logits (and no soft target) until it ends."""

    name = "cached"
    refresh = True

    def __init__(self, *, known_classes_only: bool = False) -> None:
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
        buffer.cache_logits(lambda rows: frozen.logits(rows.x, rows.task), only_new=not self.refresh,
                            batch_size=_PASS_BATCH)
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


class EnsembleTeacher(Teacher):
    """The snapshots of the last ``n_teachers`` experiences (:class:`TeacherSet`);
    ``ensemble="own"`` distils each sample from the teacher that finished its own
    experience, ``"average"`` from the mean of the softened probabilities of the kept
    teachers trained on it (at ``temperature``, set by the plugin). Samples of the
    experience being learned get no target, as with :class:`SnapshotTeacher`."""

    name = "ensemble"

    def __init__(
        self, *, n_teachers: int = 4, ensemble: str = "own", known_classes_only: bool = False,
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
        return logits, only_taught(mask, sample.experience, self._experience - 1, logits)

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


class EMATeacher(Teacher):
    """Online distillation: the teacher is an exponential moving average of the
    student's weights (a "mean teacher"), updated after every training iteration
    (:class:`EMAWeights`). It is ready once the first experience has ended; its
    known classes are the ones trained so far."""

    name = "ema"

    def __init__(self, *, half_life: float = EMA_HALF_LIFE, update_probability: float = 1.0, seed: int = 0) -> None:
        self.weights = EMAWeights(half_life=half_life, update_probability=update_probability, seed=seed)
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


class TrainedTeacher(Teacher):
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


# The teacher parts by name (KDReplayConfig.teacher, the kd-* methods' teacher setting).
TEACHERS = {
    "snapshot": SnapshotTeacher,
    "cached": CachedTeacher,
    "own": OwnExperienceTeacher,
    "ensemble": EnsembleTeacher,
    "ema": EMATeacher,
}


TEACHER_NAMES = tuple(TEACHERS)
DEFAULT_TEACHER = "snapshot"
_Teacher = Teacher  # the base class's name before it was public


def make_teacher(name: str, **settings) -> Teacher:
    """A teacher by name (``TEACHERS``) with its own settings."""
    if name not in TEACHERS:
        raise ValueError(f"teacher must be one of {tuple(TEACHERS)} or a teacher object, got {name!r}")
    return TEACHERS[name](**settings)

