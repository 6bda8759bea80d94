"""A frozen snapshot of the model, queried for soft targets."""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn

from ckd.losses import average_soft_targets

__all__ = ["ENSEMBLES", "Teacher", "TeacherSet", "default_forward"]

ENSEMBLES = ("own", "average")

ForwardFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


def default_forward(model: nn.Module, x: Tensor, task: Tensor) -> Tensor:
    return model(x)


class Teacher:
    """A deep copy of ``model`` in ``eval()`` mode with gradients off.

    known_classes: bool ``(n_tasks, C)``: the classes the model had been trained
    on, per task label, when the snapshot was taken. Soft targets are restricted
    to them.
    forward: how to call the model with ``(x, task_labels)`` (multi-head models
    take the task labels; the default ignores them).
    multi_task: the model has one head per task; samples of a task the teacher
    never saw get no soft target.
    known_classes_only: restrict soft targets to the known classes. With False,
    every output of the teacher is a target (for tasks it has seen): on a fixed
    head its low scores for classes it never saw tell the student to keep them low.
    """

    def __init__(
        self,
        model: nn.Module,
        known_classes: Tensor,
        forward: ForwardFn = default_forward,
        multi_task: bool = False,
        known_classes_only: bool = True,
    ) -> None:
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.known_classes = known_classes.clone().bool()
        self.forward = forward
        self.multi_task = multi_task
        self.known_classes_only = known_classes_only

    @property
    def known_tasks(self) -> Tensor:
        """bool ``(n_tasks,)``: task labels with at least one known class."""
        return self.known_classes.any(dim=1)

    def class_mask(self, task: Tensor, num_classes: int) -> Tensor:
        """bool ``(B, num_classes)``: the classes the teacher knew for each sample's task."""
        table = self._mask_table(num_classes, task.device, self.known_classes_only)
        return table[task.clamp_max(table.shape[0] - 1)]

    def known_class_mask(self, task: Tensor, num_classes: int) -> Tensor:
        """bool ``(B, num_classes)``: the classes the teacher was trained on for each
        sample's task, whatever ``known_classes_only`` says (for distillation on new data)."""
        table = self._mask_table(num_classes, task.device, True)
        return table[task.clamp_max(table.shape[0] - 1)]

    def _mask_table(self, num_classes: int, device: torch.device, known_only: bool) -> Tensor:
        """bool ``(n_tasks + 1, num_classes)``; the last row (tasks never seen) is all False.
        Built once per width and device, so a training step only indexes it."""
        key = (num_classes, str(device), known_only)
        if getattr(self, "_tables", None) is None:
            self._tables = {}
        if key not in self._tables:
            known = self.known_classes
            table = torch.zeros(known.shape[0] + 1, num_classes, dtype=torch.bool)
            if known_only:
                width = min(num_classes, known.shape[1])
                table[:-1, :width] = known[:, :width]
            else:
                table[:-1] = known.any(dim=1, keepdim=True)
            self._tables[key] = table.to(device)
        return self._tables[key]

    def logits(self, x: Tensor, task: Tensor) -> tuple[Tensor, Tensor | None]:
        """Soft-target logits ``(B, C_t)`` and their class mask ``(B, C_t)``
        (``None`` when every output of every sample is a target).

        A multi-head teacher is only run on the samples of tasks it has a head for.
        """
        with torch.inference_mode():
            if self.multi_task:
                known = self.known_tasks.to(task.device)
                has_head = known[task.clamp_max(known.shape[0] - 1)] & (task < known.shape[0])
                rows = has_head.nonzero().squeeze(1)
                out_rows = self.forward(self.model, x[rows], task[rows])
                out = torch.zeros(x.shape[0], out_rows.shape[1], device=out_rows.device, dtype=out_rows.dtype)
                out[rows] = out_rows
            else:
                out = self.forward(self.model, x, task)
        # Leave inference mode: the targets enter an autograd graph as constants.
        out = out.clone()
        if not self.known_classes_only and not self.multi_task:
            return out, None  # every output of every sample is a target
        return out, self.class_mask(task, out.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of the snapshot's parameters and buffers."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: torch.device | str) -> "Teacher":
        self.model.to(device)
        return self


class TeacherSet:
    """The snapshots taken after the last ``size`` experiences, each tagged with the
    experience it finished (oldest first).

    Memory: ``size`` copies of the model's parameters and buffers (for the
    784-100-100-10 MLP, 89,610 floats = 350 KiB each); the plugin's
    ``teacher="own"`` mode keeps per-sample logits instead of models.
    """

    def __init__(self, size: int) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"n_teachers must be an integer >= 1, got {size!r}")
        self.size = size
        self.teachers: list[Teacher] = []
        self.experiences: list[int] = []
        self._finished: Tensor | None = None  # ``experiences`` on the device, built once per change

    def __len__(self) -> int:
        return len(self.teachers)

    @property
    def latest(self) -> Teacher | None:
        return self.teachers[-1] if self.teachers else None

    def make_room(self) -> None:
        """Drop the oldest snapshots so that one more fits (before copying the model)."""
        while len(self.teachers) >= self.size:
            self.teachers.pop(0)
            self.experiences.pop(0)
            self._finished = None

    def add(self, teacher: Teacher, experience: int) -> None:
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
            self._finished = torch.as_tensor(self.experiences, device=experience.device)
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
