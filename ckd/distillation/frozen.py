"""Frozen copies of a model that give soft targets: one snapshot, or a set of them."""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn

from ckd.distillation.devices import to_device
from ckd.distillation.known_classes import ClassMasks
from ckd.distillation.losses import average_soft_targets

__all__ = ["ENSEMBLES", "ForwardFn", "FrozenModel", "TeacherSet", "default_forward", "frozen_from", "frozen_state", "model_nbytes"]


ENSEMBLES = ("own", "average")


ForwardFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


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
        self._masks = ClassMasks(self.known_classes)
        self._tables: dict = {}
        known = self.known_classes.any(dim=1).nonzero().flatten()
        self._any_known_task = int(known[0]) if known.numel() else 0

    @property
    def known_tasks(self) -> Tensor:
        """bool ``(n_tasks,)``: task labels with at least one known class."""
        return self.known_classes.any(dim=1)

    def class_mask(self, task: Tensor, num_classes: int) -> Tensor:
        """bool ``(B, num_classes)``: each sample's target classes (see the class doc)."""
        return self._masks(task, num_classes, self.known_classes_only)

    def known_class_mask(self, task: Tensor, num_classes: int) -> Tensor:
        """bool ``(B, num_classes)``: the classes the teacher was trained on for each
        sample's task (for distillation on new data, where other outputs say nothing)."""
        return self._masks(task, num_classes, True)

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
        return model_nbytes(self.model)

    def to(self, device: torch.device | str) -> "FrozenModel":
        self.model.to(device)
        self._masks.clear()
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


def frozen_state(model: FrozenModel | None) -> dict | None:
    return None if model is None else model.state_dict()


def frozen_from(state: dict | None) -> FrozenModel | None:
    return None if state is None else FrozenModel.from_state(state)


def model_nbytes(model: nn.Module) -> int:
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
