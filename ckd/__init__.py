"""ckd: knowledge distillation against catastrophic forgetting, for Avalanche.

The public face: the KD plugin and its config, the parts that compose with it, the teachers
(``Teacher`` is the base class for your own) and the EMA evaluation. They load on first use:
importing Avalanche takes seconds, and reading results or starting the CLI does not need it.
Everything else is in the folders: ``ckd.distillation`` (the core), ``ckd.data``,
``ckd.engines``, ``ckd.benchmarking`` and ``ckd.reports``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Each public name and the module that defines it.
_EXPORTS = {
    "KDReplayPlugin": "ckd.distillation.plugin",
    "KDReplayConfig": "ckd.distillation.config",
    "LogitMatchingPlugin": "ckd.distillation.parts.logit_matching",
    "CurrentDistillationPlugin": "ckd.distillation.parts.current_data",
    "AsymmetricCrossEntropyPlugin": "ckd.distillation.parts.current_data",
    "FeatureDistillationPlugin": "ckd.distillation.parts.feature_distillation",
    "RelationDistillationPlugin": "ckd.distillation.parts.feature_distillation",
    "WeightAligningPlugin": "ckd.distillation.parts.weight_aligning",
    "EMAEvaluationPlugin": "ckd.distillation.parts.weight_averaging",
    "DistillationMetrics": "ckd.distillation.parts.distillation_metrics",
    "DistillationLossMetric": "ckd.distillation.parts.distillation_metrics",
    "Teacher": "ckd.distillation.teachers",
    "SnapshotTeacher": "ckd.distillation.teachers",
    "CachedTeacher": "ckd.distillation.teachers",
    "OwnExperienceTeacher": "ckd.distillation.teachers",
    "EnsembleTeacher": "ckd.distillation.teachers",
    "EMATeacher": "ckd.distillation.teachers",
    "TrainedTeacher": "ckd.distillation.teachers",
}

__all__ = [
    "AsymmetricCrossEntropyPlugin",
    "CachedTeacher",
    "CurrentDistillationPlugin",
    "DistillationLossMetric",
    "DistillationMetrics",
    "EMAEvaluationPlugin",
    "EMATeacher",
    "EnsembleTeacher",
    "FeatureDistillationPlugin",
    "KDReplayConfig",
    "KDReplayPlugin",
    "LogitMatchingPlugin",
    "OwnExperienceTeacher",
    "RelationDistillationPlugin",
    "SnapshotTeacher",
    "Teacher",
    "TrainedTeacher",
    "WeightAligningPlugin",
    "__version__",
]

if TYPE_CHECKING:  # what editors and type checkers see; at run time __getattr__ loads each name on first use
    from ckd.distillation.config import KDReplayConfig
    from ckd.distillation.parts.current_data import AsymmetricCrossEntropyPlugin, CurrentDistillationPlugin
    from ckd.distillation.parts.distillation_metrics import DistillationLossMetric, DistillationMetrics
    from ckd.distillation.parts.feature_distillation import FeatureDistillationPlugin, RelationDistillationPlugin
    from ckd.distillation.parts.logit_matching import LogitMatchingPlugin
    from ckd.distillation.parts.weight_aligning import WeightAligningPlugin
    from ckd.distillation.parts.weight_averaging import EMAEvaluationPlugin
    from ckd.distillation.plugin import KDReplayPlugin
    from ckd.distillation.teachers import (
        CachedTeacher,
        EMATeacher,
        EnsembleTeacher,
        OwnExperienceTeacher,
        SnapshotTeacher,
        Teacher,
        TrainedTeacher,
    )


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ckd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
