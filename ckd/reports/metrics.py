"""Continual-learning metrics as pure functions on an accuracy matrix.

``R`` is ``(T, T)``: ``R[i][j]`` is the accuracy (a fraction in ``[0, 1]``) on
test experience ``j`` after training experience ``i``. Every metric below
averages over the ``T - 1`` experiences that were followed by more training,
so a single-experience stream has no forgetting and no backward transfer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "accuracy_matrix",
    "final_average_accuracy",
    "average_forgetting",
    "average_forgetting_avalanche",
    "backward_transfer",
    "compute_metrics",
]

AccuracyMatrix = Sequence[Sequence[float]] | np.ndarray


def accuracy_matrix(R: AccuracyMatrix) -> np.ndarray:
    """Validate ``R`` and return it as a float64 array of shape ``(T, T)``.

    Raises ``ValueError`` when ``R`` is ragged, not square, empty, or holds a
    value outside ``[0, 1]`` (NaN included).
    """
    try:
        matrix = np.asarray(R, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"accuracy matrix must be a square table of numbers: {err}") from None
    if matrix.size == 0:
        raise ValueError(f"accuracy matrix must have at least 1 row, got shape {matrix.shape}")
    if matrix.ndim != 2:
        raise ValueError(f"accuracy matrix must be 2-D (T, T), got shape {matrix.shape}")
    rows, cols = matrix.shape
    if rows != cols:
        raise ValueError(f"accuracy matrix must be square (T, T), got shape {matrix.shape}")
    outside = ~((matrix >= 0.0) & (matrix <= 1.0))
    if outside.any():
        i, j = (int(k) for k in np.argwhere(outside)[0])
        raise ValueError(
            f"accuracy must be a fraction in [0, 1], got R[{i}][{j}] = {matrix[i, j]}"
        )
    return matrix


def final_average_accuracy(R: AccuracyMatrix) -> float:
    """``ACC = (1/T) * sum_j R[T-1][j]``: mean accuracy over all test experiences at the end."""
    return float(accuracy_matrix(R)[-1].mean())


def average_forgetting(R: AccuracyMatrix) -> float:
    """Best-ever minus final accuracy, averaged (Mammoth, FACIL, PyCIL).

    ``F = (1/(T-1)) * sum_{j<T-1} (max_{j<=i<T-1} R[i][j] - R[T-1][j])``; ``0.0`` when ``T == 1``.
    An experience that ends above its best earlier accuracy contributes a negative term.
    """
    matrix = accuracy_matrix(R)
    last = matrix.shape[0] - 1
    if last == 0:
        return 0.0
    best = np.array([matrix[j:last, j].max() for j in range(last)])
    return float((best - matrix[last, :last]).mean())


def average_forgetting_avalanche(R: AccuracyMatrix) -> float:
    """Right-after-training minus final accuracy, averaged (Avalanche's ExperienceForgetting).

    ``F_av = (1/(T-1)) * sum_{j<T-1} (R[j][j] - R[T-1][j])``; ``0.0`` when ``T == 1``.
    Equals ``-backward_transfer(R)``.
    """
    matrix = accuracy_matrix(R)
    last = matrix.shape[0] - 1
    if last == 0:
        return 0.0
    return float((np.diag(matrix)[:last] - matrix[last, :last]).mean())


def backward_transfer(R: AccuracyMatrix) -> float:
    """Backward transfer (Lopez-Paz & Ranzato, 2017).

    ``BWT = (1/(T-1)) * sum_{j<T-1} (R[T-1][j] - R[j][j])``; ``0.0`` when ``T == 1``.
    Negative values are forgetting.
    """
    matrix = accuracy_matrix(R)
    last = matrix.shape[0] - 1
    if last == 0:
        return 0.0
    return float((matrix[last, :last] - np.diag(matrix)[:last]).mean())


def compute_metrics(R: AccuracyMatrix) -> dict[str, float]:
    """All summary metrics of ``R``, keyed as in the result JSON.

    Keys: ``final_average_accuracy``, ``average_forgetting`` (best-ever minus final),
    ``average_forgetting_avalanche`` (right-after-training minus final), ``bwt``.
    """
    matrix = accuracy_matrix(R)
    return {
        "final_average_accuracy": final_average_accuracy(matrix),
        "average_forgetting": average_forgetting(matrix),
        "average_forgetting_avalanche": average_forgetting_avalanche(matrix),
        "bwt": backward_transfer(matrix),
    }
