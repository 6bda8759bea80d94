"""Where in a model the parts read: its output layer."""

from __future__ import annotations

from torch import nn

__all__ = ["last_linear"]


def last_linear(model: nn.Module, what: str = "this") -> nn.Linear:
    """The model's last ``nn.Linear`` (its output layer for the backbones here)."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise ValueError(f"the model has no nn.Linear layer, which {what} needs")
    return last
