"""How a student relates to its teacher.

The functions take ``student_logits``/``teacher_logits`` ``(N, C)`` and ``targets``
``(N,)`` of the same held-out (or buffer) samples and return Python floats.
Fractions are in ``[0, 1]``. :class:`TeacherComparison` gathers those logits batch
by batch from a plugin's teacher; the runner's per-experience record and the
Avalanche metric :class:`ckd.distillation.parts.distillation_metrics.DistillationMetrics` both go through it.

A plugin that distils from a teacher model is a :class:`Distiller`: it has
``teacher`` (the frozen model giving soft targets now, ``None`` before one exists
or when it keeps logits instead) and ``temperature``; and, when it replays, a
``buffer``. :func:`find_distiller` picks it among a strategy's plugins.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ckd.distillation.frozen import FrozenModel
from ckd.distillation.losses import soft_kl

__all__ = [
    "Distiller",
    "TeacherComparison",
    "agreement",
    "compare_with_teacher",
    "distillation_report",
    "expected_calibration_error",
    "find_distiller",
    "split_accuracy",
]


@runtime_checkable
class Distiller(Protocol):
    """What a distillation plugin shows of its teacher (``KDReplayPlugin``, ``CurrentDistillationPlugin``)."""

    @property
    def teacher(self) -> FrozenModel | None: ...

    @property
    def temperature(self) -> float: ...


def find_distiller(plugins: Iterable[object]) -> Distiller | None:
    """The first of ``plugins`` that is a :class:`Distiller` (``None``: none is)."""
    return next((p for p in plugins if isinstance(p, Distiller)), None)


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


class TeacherComparison:
    """A student's logits against its teacher's on the same samples, gathered batch by batch.

    ``add`` takes the student's logits ``(B, C)`` of inputs ``x (B, ...)`` with task
    labels ``(B,)`` and targets ``(B,)``, runs ``teacher`` on them, and cuts the
    student's logits to the teacher's width (the head may have grown since the
    teacher was frozen). ``report`` is :func:`distillation_report` of everything added.
    """

    def __init__(self, teacher: FrozenModel, temperature: float) -> None:
        self.teacher = teacher
        self.temperature = temperature
        self._student: list[Tensor] = []
        self._teacher: list[Tensor] = []
        self._targets: list[Tensor] = []

    def add(self, student_logits: Tensor, x: Tensor, task: Tensor, targets: Tensor) -> None:
        teacher_logits, _ = self.teacher.logits(x, task)
        self._student.append(student_logits.detach()[:, : teacher_logits.shape[1]].float())  # float32 under autocast
        self._teacher.append(teacher_logits.float())
        self._targets.append(targets)

    def report(self) -> dict[str, float] | None:
        """The report of every sample added (``None``: none was)."""
        if not self._targets:
            return None
        student, teacher, targets = (torch.cat(p) for p in (self._student, self._teacher, self._targets))
        return distillation_report(student, teacher, targets, self.temperature)


def compare_with_teacher(
    model: nn.Module, teacher: FrozenModel, x: Tensor, task: Tensor, targets: Tensor, temperature: float,
    batch_size: int = 1000,
) -> dict[str, float] | None:
    """:func:`distillation_report` of ``model`` in eval mode, called as the teacher calls its
    own copy, against ``teacher`` on ``x (N, ...)`` with task labels and targets ``(N,)``."""
    comparison = TeacherComparison(teacher, temperature)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                rows = slice(start, start + batch_size)
                student = teacher.forward(model, x[rows], task[rows])
                comparison.add(student, x[rows], task[rows], targets[rows])
    finally:
        model.train(was_training)
    return comparison.report()
