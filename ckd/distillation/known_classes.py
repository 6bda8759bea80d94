"""What a teacher was trained on: the classes seen per task label, the class masks built
from them, and the replayed rows it may give targets to. Shapes may carry leading seed
dimensions (a vectorized pass). Nothing here imports Avalanche."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ckd.distillation.devices import to_device

__all__ = ["ClassMasks", "grow_seen_classes", "only_taught"]


def grow_seen_classes(seen: Tensor, task: int, classes: Sequence[int]) -> Tensor:
    """bool ``(n_tasks, C)`` ``seen`` grown to include ``classes`` of task label ``task``
    (a new table; ``seen`` is left as it is). An empty ``classes`` adds no class."""
    n_tasks = max(seen.shape[0], task + 1)
    n_classes = max(seen.shape[1], max(classes, default=-1) + 1)
    grown = torch.zeros(n_tasks, n_classes, dtype=torch.bool)
    grown[: seen.shape[0], : seen.shape[1]] = seen
    grown[task, list(classes)] = True
    return grown


class ClassMasks:
    """Each sample's target classes for a teacher that knows ``known`` (bool ``(n_tasks, C)``,
    the classes it was trained on per task label). The ``(n_tasks + 1, width)`` table is
    built once per width, device and kind, so a training step only indexes it; its last row
    (tasks never seen) is all False."""

    def __init__(self, known: Tensor) -> None:
        self.known = known
        self._tables: dict = {}

    def __call__(self, task: Tensor, width: int, known_only: bool) -> Tensor:
        """bool ``(*task.shape, width)``: ``known_only``, the classes known for each sample's
        task; otherwise every class of a known task."""
        table = self.table(width, task.device, known_only)
        return table[task.clamp_max(table.shape[0] - 1)]

    def table(self, width: int, device: torch.device, known_only: bool) -> Tensor:
        key = (width, str(device), known_only)
        if key not in self._tables:
            known = self.known
            table = torch.zeros(known.shape[0] + 1, width, dtype=torch.bool)
            if known_only:
                w = min(width, known.shape[1])
                table[:-1, :w] = known[:, :w]
            else:
                table[:-1] = known.any(dim=1, keepdim=True)
            self._tables[key] = to_device(table, device)  # built in a step: no host sync
        return self._tables[key]

    def clear(self) -> None:
        """Drop the tables built (e.g. when the teacher moves to another device)."""
        self._tables = {}


def only_taught(mask: Tensor | None, experience: Tensor, finished: int, logits: Tensor) -> Tensor:
    """``mask`` cut to the samples of experiences ``≤ finished``: a frozen teacher knows
    nothing about the samples of the experience being learned (a reservoir holds some),
    and pulling them towards its outputs fights learning them.

    experience ``(..., R)``; logits ``(..., R, C)`` (its shape only); mask bool ``(..., R, C)``
    or ``None`` (every class). Returns bool ``(..., R, C)``. No host sync."""
    taught = (experience <= finished).unsqueeze(-1).expand_as(logits)
    return taught if mask is None else mask & taught
