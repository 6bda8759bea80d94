"""Training-time augmentation as batched tensor ops on the device, and per-dataset normalisation.

The DER protocol (Buzzega et al., 2020) trains CIFAR and Tiny ImageNet with
``RandomCrop(size, padding=4)`` then ``RandomHorizontalFlip()`` on every sample
it forwards, stream and replayed alike, and evaluates un-augmented, normalised
images. Here the streams already yield normalised images, so a crop pads with
the normalised value of a black pixel (``Normalization.black``): the result is
the same as torchvision padding with 0 before normalising. No PIL, no Python
loop over samples: one ``gather`` per minibatch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "CIFAR10_NORMALIZATION",
    "CIFAR100_NORMALIZATION",
    "CropFlip",
    "Normalization",
    "TINYIMAGENET_NORMALIZATION",
    "random_crop_flip",
]


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x - mean) / std`` of images in ``[0, 1]``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean and std need one value per channel, got {len(self.mean)} and {len(self.std)}")
        if not all(s > 0 and math.isfinite(s) for s in self.std):
            raise ValueError(f"std must be > 0 for every channel, got {self.std}")

    def __call__(self, x: Tensor) -> Tensor:
        """``x (..., C, H, W)`` float in [0, 1], normalised in place."""
        shape = (len(self.mean), 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return x.sub_(mean).div_(std)

    @property
    def black(self) -> tuple[float, ...]:
        """What a 0 pixel becomes: ``-mean / std`` per channel."""
        return tuple(-m / s for m, s in zip(self.mean, self.std))


# The DER authors' constants (mammoth datasets/seq_cifar10.py, seq_cifar100.py, seq_tinyimagenet.py).
CIFAR10_NORMALIZATION = Normalization(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2615))
CIFAR100_NORMALIZATION = Normalization(mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761))
TINYIMAGENET_NORMALIZATION = Normalization(mean=(0.4802, 0.4480, 0.3975), std=(0.2770, 0.2691, 0.2821))


def random_crop_flip(
    x: Tensor,
    padding: int,
    fill: tuple[float, ...] = (0.0,),
    flip_probability: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Each image padded by ``padding`` pixels of ``fill``, cropped back to its size
    at a random offset, then mirrored left-right with probability ``flip_probability``.

    x: ``(B, C, H, W)``; fill: one value, or one per channel. Offsets are uniform
    in ``{0, ..., 2·padding}`` for rows and columns independently, as torchvision's
    ``RandomCrop(H, padding)``. Returns a new ``(B, C, H, W)`` tensor on ``x``'s device.
    """
    if x.dim() != 4:
        raise ValueError(f"random_crop_flip expects images (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    values = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
    if values.numel() not in (1, c):
        raise ValueError(f"fill needs 1 or {c} values (one per channel), got {values.numel()}")
    hp, wp = h + 2 * padding, w + 2 * padding
    padded = values.view(1, -1, 1, 1).expand(b, c, hp, wp).clone()
    padded[:, :, padding : padding + h, padding : padding + w] = x
    top = torch.randint(0, 2 * padding + 1, (b, 1, 1), device=x.device, generator=generator)
    left = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device, generator=generator)
    flip = torch.rand(b, 1, device=x.device, generator=generator) < flip_probability
    columns = torch.arange(w, device=x.device)
    columns = torch.where(flip, columns.flip(0), columns) + left  # (B, W)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + top  # (B, H, 1)
    index = (rows * wp + columns.unsqueeze(1)).view(b, 1, h * w).expand(b, c, h * w)
    return padded.view(b, c, hp * wp).gather(2, index).view(b, c, h, w)


@dataclass(frozen=True)
class CropFlip:
    """Random crop with ``padding`` pixels of ``fill`` and a horizontal flip with
    probability ``flip_probability`` (DER: padding 4, probability 0.5, black fill)."""

    padding: int = 4
    flip_probability: float = 0.5
    fill: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        if not isinstance(self.padding, int) or isinstance(self.padding, bool) or self.padding < 0:
            raise ValueError(f"padding must be an integer >= 0, got {self.padding!r}")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"flip_probability must be in [0, 1], got {self.flip_probability!r}")
        object.__setattr__(self, "fill", tuple(float(v) for v in self.fill))

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return random_crop_flip(x, self.padding, self.fill, self.flip_probability, generator)


