"""Backbones used by the benchmark runner."""

from __future__ import annotations

import math

from torch import nn

__all__ = ["MODELS", "make_model", "mlp", "small_cnn"]


def mlp(input_shape: tuple[int, ...], n_classes: int, hidden: int = 100) -> nn.Module:
    """The DER-paper MLP: flatten, two hidden ReLU layers of ``hidden`` units, linear head."""
    d = math.prod(input_shape)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(d, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_classes),
    )


def small_cnn(input_shape: tuple[int, ...], n_classes: int, width: int = 32) -> nn.Module:
    """Two 3×3 conv blocks (conv, ReLU, 2×2 max-pool), then a linear head. Input ``(B, C, H, W)``."""
    c, h, w = input_shape
    out_hw = (h // 4) * (w // 4)
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * out_hw, n_classes),
    )


MODELS = {"mlp": mlp, "cnn": small_cnn}


def make_model(name: str, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](tuple(input_shape), n_classes)
