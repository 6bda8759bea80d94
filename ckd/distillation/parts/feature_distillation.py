"""Feature- and relation-based distillation on the samples a KDReplayPlugin replays.

Both plugins ride on a :class:`~ckd.distillation.plugin.KDReplayPlugin` whose teacher keeps a
model (snapshot, ensemble — its latest snapshot — or EMA): they read which rows of
the step were replayed and that teacher model, capture activations with forward hooks (any
``nn.Module``; by default the input of the model's last ``nn.Linear``, i.e. the
penultimate representation), and add their term to ``strategy.loss``. Hooks
live only while an epoch trains. They may sit before or after the KDReplayPlugin in
``plugins=[...]``, which must hold it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from avalanche.core import SupervisedPlugin
from avalanche.models.utils import avalanche_forward
from torch import Tensor, nn

from ckd.distillation.layers import last_linear
from ckd.distillation.losses import feature_distance, rkd_angle, rkd_distance
from ckd.distillation.plugin import KDReplayPlugin
from ckd.distillation.plugin_base import require_among_plugins, teacher_precision
from ckd.distillation.teachers import CachedTeacher

__all__ = ["FeatureDistillationPlugin", "RelationDistillationPlugin", "PENULTIMATE"]

PENULTIMATE = "penultimate"


def _resolve(model: nn.Module, name: str) -> tuple[nn.Module, bool]:
    """The module for ``name`` and whether its *input* (not output) is the feature."""
    if name == PENULTIMATE:
        return last_linear(model, "distilling the penultimate features (or name the modules)"), True
    return model.get_submodule(name), False


@contextmanager
def _capture(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Record the features named ``names`` while the block runs; hooks removed after."""
    store: dict[str, Tensor] = {}
    handles = []
    for name in names:
        module, use_input = _resolve(model, name)

        def hook(_module, inputs, output, name=name, use_input=use_input):
            store[name] = inputs[0] if use_input else output

        handles.append(module.register_forward_hook(hook))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class _Weighted:
    weight: float

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")


class _ReplayFeaturePlugin(SupervisedPlugin):
    def __init__(self, replay: KDReplayPlugin, modules: Sequence[str], weight: float) -> None:
        super().__init__()
        if isinstance(replay.teacher_part, CachedTeacher):
            raise ValueError(
                f"feature and relation distillation need the teacher model: the KDReplayPlugin's teacher "
                f"{replay.teacher_part.name!r} keeps logits only; use 'snapshot', 'ensemble' or 'ema'"
            )
        if not modules:
            raise ValueError("modules must name at least one module (or 'penultimate')")
        _Weighted(weight)
        self.replay = replay
        self.modules = list(modules)
        self.weight = weight
        self._student_features: dict[str, Tensor] = {}
        self._capture = None

    def before_training(self, strategy, **kwargs) -> None:
        require_among_plugins(strategy, self.replay, self)

    # Hooks live per epoch: they are gone before the KDReplayPlugin snapshots the
    # model at the end of the experience, so the teacher never inherits them.
    def before_training_epoch(self, strategy, **kwargs) -> None:
        self._capture = _capture(strategy.model, self.modules)
        self._student_features = self._capture.__enter__()

    def after_training_epoch(self, strategy, **kwargs) -> None:
        if self._capture is not None:
            self._capture.__exit__(None, None, None)
            self._capture = None

    def before_backward(self, strategy, **kwargs) -> None:
        step, teacher = self.replay.replay, self.replay.teacher
        if step is None or teacher is None or self.weight == 0:
            return
        with _capture(teacher.model, self.modules) as teacher_features, teacher_precision(strategy), torch.inference_mode():
            avalanche_forward(teacher.model, step.x, step.sample.task)
        loss = sum(
            self.term(self._student_features[name][step.rows].flatten(1), teacher_features[name].flatten(1).float().clone())
            for name in self.modules
        )
        strategy.loss += self.weight * loss

    def term(self, student: Tensor, teacher: Tensor) -> Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:  # the teacher is the KDReplayPlugin's
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_capture"], state["_student_features"] = None, {}
        return state


class FeatureDistillationPlugin(_ReplayFeaturePlugin):
    """``weight · distance(f_student(x_r), f_teacher(x_r))`` on replayed samples, summed
    over ``modules`` (names from ``model.named_modules()``, or ``"penultimate"``);
    ``metric`` is ``"l2"`` (mean squared error) or ``"cosine"`` (1 − cosine)."""

    def __init__(
        self,
        replay: KDReplayPlugin,
        *,
        modules: Sequence[str] = (PENULTIMATE,),
        weight: float = 1.0,
        metric: str = "l2",
    ) -> None:
        if metric not in ("l2", "cosine"):
            raise ValueError(f"metric must be 'l2' or 'cosine', got {metric!r}")
        super().__init__(replay, modules, weight)
        self.metric = metric

    def term(self, student: Tensor, teacher: Tensor) -> Tensor:
        return feature_distance(student, teacher, self.metric)


class RelationDistillationPlugin(_ReplayFeaturePlugin):
    """RKD (Park et al., 2019) on the embeddings of a replay minibatch:
    ``weight · (distance_weight · L_dist + angle_weight · L_angle)``."""

    def __init__(
        self,
        replay: KDReplayPlugin,
        *,
        modules: Sequence[str] = (PENULTIMATE,),
        weight: float = 1.0,
        distance_weight: float = 1.0,
        angle_weight: float = 2.0,
    ) -> None:
        super().__init__(replay, modules, weight)
        _Weighted(distance_weight)
        _Weighted(angle_weight)
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight

    def term(self, student: Tensor, teacher: Tensor) -> Tensor:
        if student.shape[0] < 3:
            return student.sum() * 0.0  # too few samples for a relation
        return self.distance_weight * rkd_distance(student, teacher) + self.angle_weight * rkd_angle(student, teacher)
