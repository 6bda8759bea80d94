"""Seeded sampling of a stream's rows, and the pixel maps (identity, permutation, rotation) applied when a
sample is read."""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import Tensor

__all__ = ["identity_map", "permutation_maps", "rotation_angles", "rotation_map", "seeded_rng", "stratified_order",
           "subsample_rows"]


def seeded_rng(seed: int, purpose: str) -> np.random.Generator:
    """An independent generator per (seed, purpose), so that e.g. the angles do not
    depend on how much data was subsampled before them."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random order of ``labels``' positions ``(N,)`` whose every prefix is
    class-proportional (within one sample per class)."""
    shuffled = rng.permutation(len(labels))
    _, inverse, counts = np.unique(labels[shuffled], return_inverse=True, return_counts=True)
    by_class = np.argsort(inverse, kind="stable")
    first_of_class = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(labels), dtype=np.int64)
    rank[by_class] = np.arange(len(labels)) - first_of_class[inverse[by_class]]
    quantile = (rank + 0.5) / counts[inverse]
    return shuffled[np.argsort(quantile, kind="stable")]


def subsample_rows(rows: np.ndarray, labels: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most ``limit`` of ``rows``, class-proportionally, in their original order."""
    if limit is None or len(rows) <= limit:
        return rows
    return np.sort(rows[stratified_order(labels[rows], rng)[:limit]])


def identity_map(n_pixels: int) -> Tensor:
    return torch.arange(n_pixels)


def permutation_maps(n: int, n_pixels: int, seed: int) -> list[Tensor]:
    rng = seeded_rng(seed, "permutations")
    return [torch.from_numpy(rng.permutation(n_pixels)) for _ in range(n)]


def rotation_angles(n: int, seed: int) -> list[float]:
    """``n`` angles in degrees, uniform in [0, 180)."""
    return [float(a) for a in seeded_rng(seed, "rotations").uniform(0.0, 180.0, size=n)]


def rotation_map(angle: float, height: int, width: int) -> Tensor:
    """``(H*W,)`` source pixel of each output pixel of a rotation by ``angle`` degrees
    (counter-clockwise, about the centre, nearest neighbour as in
    ``torchvision.transforms.functional.rotate``); ``H*W`` (the zero fill pixel)
    where the source falls outside the image.

    Rotating an image of pixel numbers gives the map: nearest-neighbour sampling
    copies values, so gathering through it equals rotating any image.
    """
    from torchvision.transforms.functional import InterpolationMode, rotate

    n_pixels = height * width
    numbers = torch.arange(1, n_pixels + 1, dtype=torch.float32).view(1, 1, height, width)
    rotated = rotate(numbers, angle, interpolation=InterpolationMode.NEAREST)
    return (rotated.reshape(-1).round().long() - 1) % (n_pixels + 1)


