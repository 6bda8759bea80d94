"""The distiller's diagnostics and its distillation loss as Avalanche metrics, for any strategy's evaluator."""

from __future__ import annotations

import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metric_utils import get_metric_name
from torch import Tensor

from ckd.distillation.diagnostics import Distiller, TeacherComparison
from ckd.distillation.plugin import KDReplayPlugin
from ckd.distillation.plugin_base import require_among_plugins

__all__ = ["DistillationLossMetric", "DistillationMetrics"]


class DistillationMetrics(PluginMetric[dict]):
    """Student against the teacher of a distillation plugin, per evaluation experience.

    ``distiller``: a :class:`ckd.distillation.diagnostics.Distiller` (``KDReplayPlugin``,
    ``CurrentDistillationPlugin``), also among the strategy's plugins. The teacher
    is the one it distilled from during the latest training experience (taken at
    its start: the plugin replaces its snapshot at the end of training, and
    comparing the student with its own copy would say nothing); the metric keeps a
    reference to it, so with ``n_teachers=1`` one extra model copy stays alive
    until the next experience starts.
    During evaluation it runs that teacher on each minibatch next to the
    strategy's own forward and, after each evaluated experience the teacher was
    trained on, emits ``Distillation_<name>/eval_phase/<stream>/Task<t>/Exp<i>`` for every key of
    :func:`ckd.distillation.diagnostics.distillation_report` (agreement, kl, teacher_accuracy,
    teacher_correct_accuracy, teacher_wrong_accuracy, ece_student, ece_teacher).
    Nothing is emitted until the second experience has been trained, nor with
    ``teacher="cached"``/``"own"``, which keep logits instead of a model.

    Use: ``EvaluationPlugin(accuracy_metrics(experience=True), DistillationMetrics(kd), loggers=...)``
    with ``kd`` also in the strategy's ``plugins`` (training refuses to start otherwise).
    """

    def __init__(self, distiller: Distiller) -> None:
        super().__init__()
        if not isinstance(distiller, Distiller):
            raise ValueError(
                "DistillationMetrics needs the distillation plugin whose teacher it reports (a KDReplayPlugin or "
                f"CurrentDistillationPlugin, also in the strategy's plugins), got {type(distiller).__name__}"
            )
        self.distiller = distiller
        self._comparison: TeacherComparison | None = None
        self._last: dict[str, float] = {}
        self._distilled_from = None
        self._taught = 0  # experiences 0 .. _taught - 1 are the ones the teacher was trained on

    def reset(self) -> None:
        self._comparison = None

    def result(self) -> dict[str, float]:
        return dict(self._last)

    def before_training_exp(self, strategy) -> None:
        if not any(p is self.distiller for p in strategy.plugins):
            raise ValueError(
                f"DistillationMetrics reports the teacher of a {type(self.distiller).__name__} that is not among the "
                "strategy's plugins, so it never has one: pass that same plugin object in plugins=[...]"
            )
        self._distilled_from = self.distiller.teacher  # None during the first experience
        self._taught = strategy.experience.current_experience

    def before_eval_exp(self, strategy) -> None:
        self.reset()
        if self._distilled_from is not None and strategy.experience.current_experience < self._taught:
            self._comparison = TeacherComparison(self._distilled_from, self.distiller.temperature)

    def after_eval_iteration(self, strategy) -> None:
        super().after_eval_iteration(strategy)
        if self._comparison is not None:
            y = strategy.mb_y
            task = strategy.mbatch[2] if len(strategy.mbatch) > 2 else torch.zeros_like(y)  # (x, y): task 0
            self._comparison.add(strategy.mb_output, strategy.mb_x, task, y)

    def after_eval_exp(self, strategy) -> list[MetricValue] | None:
        report = self._comparison.report() if self._comparison is not None else None
        self.reset()
        if report is None:
            return None
        self._last = report
        step = strategy.clock.train_iterations
        return [
            MetricValue(self, get_metric_name(f"Distillation_{key}", strategy, add_experience=True), value, step)
            for key, value in report.items()
        ]

    def __str__(self) -> str:
        return "Distillation"


class _StepMean:
    """The mean of per-step scalar tensors, summed on their device: read once, at the end."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.steps = 0

    def add(self, term: Tensor) -> None:
        self.total = term if self.total is None else self.total + term
        self.steps += 1

    def mean(self) -> float | None:
        return None if self.steps == 0 else self.total.item() / self.steps


class DistillationLossMetric(PluginMetric[float]):
    """The distillation term a :class:`ckd.distillation.plugin.KDReplayPlugin` adds to the loss while
    training: ``alpha · T² · KL(teacher ‖ student)`` on the replayed rows (``kd.kd_loss``).

    After each training epoch it emits ``KD_Loss_Epoch/train_phase/train_stream``, and after
    each training experience ``KD_Loss_Exp/train_phase/train_stream``: the mean over the
    steps that distilled. Steps that did not (an empty buffer, no teacher yet, ``alpha`` 0)
    are left out, not counted as 0; an epoch or experience without any emits nothing (the
    first experience, with the default snapshot teacher). The terms are summed on the
    training device and read once per epoch, so a step makes no host–device sync.

    Use: ``EvaluationPlugin(loss_metrics(epoch=True), DistillationLossMetric(kd), loggers=...)``
    with ``kd`` also in the strategy's ``plugins`` (training refuses to start otherwise).
    """

    def __init__(self, kd: KDReplayPlugin) -> None:
        super().__init__()
        if not isinstance(kd, KDReplayPlugin):
            raise ValueError(f"DistillationLossMetric needs the KDReplayPlugin whose loss it reports, got {type(kd).__name__}")
        self.kd = kd
        self._epoch = _StepMean()
        self._experience = _StepMean()
        self._last: float | None = None

    def reset(self) -> None:
        self._epoch = _StepMean()

    def result(self) -> float | None:
        """The latest mean emitted (``None`` before any)."""
        return self._last

    def before_training(self, strategy) -> None:
        require_among_plugins(strategy, self.kd, self)

    def before_training_exp(self, strategy) -> None:
        self._experience = _StepMean()

    def before_training_epoch(self, strategy) -> None:
        self.reset()

    def after_training_iteration(self, strategy) -> None:
        term = self.kd.kd_loss
        if term is not None:
            self._epoch.add(term)
            self._experience.add(term)

    def after_training_epoch(self, strategy) -> list[MetricValue] | None:
        return self._emit("KD_Loss_Epoch", self._epoch, strategy)

    def after_training_exp(self, strategy) -> list[MetricValue] | None:
        return self._emit("KD_Loss_Exp", self._experience, strategy)

    def _emit(self, name: str, steps: _StepMean, strategy) -> list[MetricValue] | None:
        mean = steps.mean()
        if mean is None:
            return None
        self._last = mean
        return [MetricValue(self, get_metric_name(name, strategy, add_task=False), mean, strategy.clock.train_iterations)]

    def __str__(self) -> str:
        return "KD_Loss"
