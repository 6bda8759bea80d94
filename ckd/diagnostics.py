"""How a student relates to its teacher: pure functions on logits.

All take ``student_logits``/``teacher_logits`` ``(N, C)`` and ``targets`` ``(N,)``
of the same held-out (or buffer) samples and return Python floats. Fractions
are in ``[0, 1]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ckd.losses import soft_kl

__all__ = ["agreement", "distillation_report", "expected_calibration_error", "split_accuracy"]


def agreement(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """Fraction of samples whose top-1 class is the same for student and teacher."""
    return (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean().item()


def split_accuracy(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor) -> tuple[float, float]:
    """Student accuracy on the samples the teacher gets right, and on those it gets wrong.

    A too-low temperature shows as the second falling while :func:`agreement`
    rises: the student copies the teacher's mistakes. ``nan`` for an empty part.
    """
    teacher_right = teacher_logits.argmax(1) == targets
    student_right = student_logits.argmax(1) == targets

    def part(mask: Tensor) -> float:
        return student_right[mask].float().mean().item() if bool(mask.any()) else math.nan

    return part(teacher_right), part(~teacher_right)


def expected_calibration_error(logits: Tensor, targets: Tensor, n_bins: int = 15) -> float:
    """ECE (Guo et al., 2017): ``Σ_b |B_b|/N · |accuracy(B_b) − confidence(B_b)|`` over
    ``n_bins`` equal-width bins of the top-1 softmax probability."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidence, predicted = F.softmax(logits.float(), dim=1).max(dim=1)
    correct = (predicted == targets).float()
    bins = torch.clamp((confidence * n_bins).long(), max=n_bins - 1)
    accuracy_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    confidence_sum = torch.bincount(bins, weights=confidence, minlength=n_bins)
    return ((accuracy_sum - confidence_sum).abs().sum() / logits.shape[0]).item()


def distillation_report(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float
) -> dict[str, float]:
    """The diagnostics a run records: ``agreement``, ``kl`` (the T²-scaled soft KL),
    ``teacher_accuracy``, ``teacher_correct_accuracy``, ``teacher_wrong_accuracy``
    (the student's accuracy on each part), ``ece_student``, ``ece_teacher``."""
    right, wrong = split_accuracy(student_logits, teacher_logits, targets)
    return {
        "agreement": agreement(student_logits, teacher_logits),
        "teacher_accuracy": (teacher_logits.argmax(1) == targets).float().mean().item(),
        "kl": soft_kl(student_logits, teacher_logits, temperature).item(),
        "teacher_correct_accuracy": right,
        "teacher_wrong_accuracy": wrong,
        "ece_student": expected_calibration_error(student_logits, targets),
        "ece_teacher": expected_calibration_error(teacher_logits, targets),
    }
