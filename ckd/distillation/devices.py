"""Small host tensors onto the training device inside a step, without a host sync."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["to_device"]


def to_device(tensor: Tensor, device: torch.device | str) -> Tensor:
    """``tensor`` on ``device``. A host tensor bound for a CUDA device goes through pinned
    memory with a non-blocking copy: a copy from pageable memory makes the host wait."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
