"""The distiller's diagnostics as an Avalanche metric, for any strategy's evaluator."""

from __future__ import annotations

import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import get_metric_name
from torch import Tensor

from ckd.diagnostics import distillation_report
from ckd.plugins import KDReplayPlugin

__all__ = ["DistillationMetrics"]


class DistillationMetrics(PluginMetric[dict]):
    """Student against the teacher of a :class:`KDReplayPlugin`, per evaluation experience.

    The teacher is the one ``kd`` distilled from during the latest training
    experience (taken at its start: the plugin replaces its snapshot at the end of
    training, and comparing the student with its own copy would say nothing); the
    metric keeps a reference to it, so with ``n_teachers=1`` one extra model copy
    stays alive until the next experience starts.
    During evaluation it runs that teacher on each minibatch next to the
    strategy's own forward and, after each evaluated experience, emits
    ``Distillation_<name>/eval_phase/<stream>/Task<t>/Exp<i>`` for every key of
    :func:`ckd.diagnostics.distillation_report` (agreement, kl, teacher_accuracy,
    teacher_correct_accuracy, teacher_wrong_accuracy, ece_student, ece_teacher).
    Nothing is emitted until the second experience has been trained, nor with
    ``teacher="cached"``/``"own"``, which keep logits instead of a model.

    Use: ``EvaluationPlugin(accuracy_metrics(experience=True), DistillationMetrics(kd), loggers=...)``
    with ``kd`` also in the strategy's ``plugins``.
    """

    def __init__(self, kd: KDReplayPlugin) -> None:
        super().__init__()
        self.kd = kd
        self._student: list[Tensor] = []
        self._teacher_logits: list[Tensor] = []
        self._targets: list[Tensor] = []
        self._last: dict[str, float] = {}
        self._distilled_from = None

    def reset(self) -> None:
        self._student, self._teacher_logits, self._targets = [], [], []

    def result(self) -> dict[str, float]:
        return dict(self._last)

    def before_training_exp(self, strategy) -> None:
        self._distilled_from = self.kd.teacher  # None during the first experience

    def before_eval_exp(self, strategy) -> None:
        self.reset()

    def after_eval_iteration(self, strategy) -> None:
        super().after_eval_iteration(strategy)
        teacher = self._distilled_from
        if teacher is None:
            return
        logits, _ = teacher.logits(strategy.mb_x, strategy.mb_task_id)
        self._teacher_logits.append(logits)
        self._student.append(strategy.mb_output.detach()[:, : logits.shape[1]])
        self._targets.append(strategy.mb_y)

    def after_eval_exp(self, strategy) -> list[MetricValue] | None:
        if not self._targets:
            return None
        report = distillation_report(
            torch.cat(self._student), torch.cat(self._teacher_logits), torch.cat(self._targets),
            self.kd.config.temperature,
        )
        self._last = report
        self.reset()
        step = strategy.clock.train_iterations
        return [
            MetricValue(self, get_metric_name(f"Distillation_{key}", strategy, add_experience=True), value, step)
            for key, value in report.items()
        ]

    def __str__(self) -> str:
        return "Distillation"
