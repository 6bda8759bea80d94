"""Where samples go in a replay buffer, as pure functions on tensors: algorithm R's slots for a
minibatch and the ranks and groups of a class-balanced refill (:mod:`ckd.distillation.buffer`)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["group_index", "rank_within_group", "reservoir_slots"]


def reservoir_slots(draw: Tensor, seen: int, mem_size: int) -> tuple[Tensor, Tensor]:
    """Algorithm R for a minibatch: the slots ``(..., n)`` of stream samples ``seen … seen + n − 1``
    from uniform ``draw (..., n)`` (float64), the scratch row ``mem_size`` for those not kept,
    and which are kept. Leading dimensions are independent buffers (one per seed)."""
    n, m, device = draw.shape[-1], mem_size, draw.device
    position = torch.arange(seen, seen + n, device=device)
    random_slot = torch.minimum((draw * (position + 1)).long(), position)
    slot = torch.where(position < m, position, random_slot)
    order = torch.arange(n, device=device).expand_as(slot)
    trash = torch.full_like(slot, m)
    slot = torch.where(slot < m, slot, trash)
    winner = torch.full((*slot.shape[:-1], m + 1), -1, dtype=torch.long, device=device)
    winner.scatter_reduce_(-1, slot, order, "amax")
    keep = (slot < m) & (winner.gather(-1, slot) == order)
    return torch.where(keep, slot, trash), keep


def rank_within_group(group: Tensor) -> Tensor:
    """For labels ``(N,)``, the position of each element among the equal labels
    before it (0 for the first occurrence, 1 for the second, ...)."""
    n = group.shape[0]
    if n == 0:
        return group
    order = torch.sort(group, stable=True).indices
    sorted_group = group[order]
    start = torch.ones(n, dtype=torch.bool, device=group.device)
    start[1:] = sorted_group[1:] != sorted_group[:-1]
    position = torch.arange(n, device=group.device)
    first = torch.cummax(torch.where(start, position, 0), dim=0).values
    rank = torch.empty_like(position)
    rank[order] = position - first
    return rank


def group_index(groups: Tensor, experience: Tensor, y: Tensor) -> Tensor:
    """Row of ``groups (G, 2)`` (sorted unique ``(experience, class)``) for each sample."""
    key_scale = int(groups[:, 1].max()) + 1 if groups.numel() else 1
    key_scale = max(key_scale, int(y.max()) + 1 if y.numel() else 1)
    group_keys = groups[:, 0] * key_scale + groups[:, 1]
    keys = experience.to(groups.device) * key_scale + y.to(groups.device)
    return torch.searchsorted(group_keys, keys)
