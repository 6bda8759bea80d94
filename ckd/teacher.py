"""A frozen snapshot of the model, queried for soft targets."""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["Teacher", "default_forward"]

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

    def to(self, device: torch.device | str) -> "Teacher":
        self.model.to(device)
        return self
