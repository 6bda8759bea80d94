"""Continual-learning methods by name: each builds an Avalanche strategy.

Every builder takes the model, the run's training settings and its own
arguments (documented defaults in ``METHOD_DEFAULTS``; unknown keys are errors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["METHOD_DEFAULTS", "TrainSettings", "available_methods", "make_strategy", "resolve_method_args"]


@dataclass(frozen=True)
class TrainSettings:
    lr: float
    batch_size: int
    epochs: int
    eval_batch_size: int
    device: str
    momentum: float = 0.0


# The replay-distillation settings every buffered kd-* method starts from.
_KD_REPLAY: dict[str, Any] = {
    "mem_size": 500, "replay_batch_size": 32, "alpha": 1.0, "temperature": 2.0,
    "beta": 1.0, "policy": "class_balanced", "known_classes_only": True,
}

# Defaults follow the DER paper's tuned Seq-MNIST settings where they exist.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "naive": {},
    "joint": {},
    "replay": {"mem_size": 500, "replay_batch_size": 10, "policy": "reservoir"},
    "lwf": {"alpha": 1.0, "temperature": 2.0},
    "ewc": {"ewc_lambda": 100.0},
    "der": {"mem_size": 500, "replay_batch_size": 10, "alpha": 1.0, "beta": 0.0},
    "kd-replay": {**_KD_REPLAY, "teacher": "snapshot", "current_classes_only": False},
    "kd-feature": {**_KD_REPLAY, "feature_weight": 1.0, "feature_metric": "l2"},
    "kd-relation": {**_KD_REPLAY, "relation_weight": 1.0},
    "kd-lwf": {"current_alpha": 1.0, "temperature": 2.0},
    "kd-replay-lwf": {**_KD_REPLAY, "current_alpha": 1.0},
    "kd-multi-teacher": {**_KD_REPLAY, "n_teachers": 4, "ensemble": "own"},
    "kd-replay-cached": {**_KD_REPLAY, "current_classes_only": False},
}


def available_methods() -> list[str]:
    return sorted(METHOD_DEFAULTS)


def resolve_method_args(method: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The method's defaults updated with ``overrides``; unknown methods or keys raise."""
    if method not in METHOD_DEFAULTS:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(available_methods())}")
    args = dict(METHOD_DEFAULTS[method])
    for key, value in (overrides or {}).items():
        if key not in args:
            allowed = ", ".join(sorted(args)) or "none"
            raise ValueError(f"method {method!r} has no setting {key!r} (settings: {allowed})")
        args[key] = value
    return args


def _plugins_for(method: str, args: dict[str, Any]) -> list:
    args = dict(args)
    from avalanche.training.plugins import EWCPlugin, LwFPlugin, ReplayPlugin
    from avalanche.training.storage_policy import ExperienceBalancedBuffer, ReservoirSamplingBuffer

    from ckd.plugins import KDReplayPlugin

    if method == "replay":
        if args["policy"] not in ("reservoir", "experience_balanced"):
            raise ValueError(f"replay policy must be 'reservoir' or 'experience_balanced', got {args['policy']!r}")
        storage = (
            ReservoirSamplingBuffer(args["mem_size"])
            if args["policy"] == "reservoir"
            else ExperienceBalancedBuffer(args["mem_size"], adaptive_size=True)
        )
        return [ReplayPlugin(args["mem_size"], batch_size_mem=args["replay_batch_size"], storage_policy=storage)]
    if method == "lwf":
        return [LwFPlugin(alpha=args["alpha"], temperature=args["temperature"])]
    if method == "ewc":
        return [EWCPlugin(ewc_lambda=args["ewc_lambda"])]
    if method == "kd-lwf":
        return [KDReplayPlugin(alpha=0.0, beta=0.0, **args)]
    if method in ("kd-replay", "kd-replay-cached", "kd-replay-lwf", "kd-multi-teacher"):
        if method == "kd-replay-cached":
            args = {**args, "teacher": "cached"}
        return [KDReplayPlugin(**args)]
    if method in ("kd-feature", "kd-relation"):
        from ckd.feature_distillation import FeatureDistillationPlugin, RelationDistillationPlugin

        extra = {k: args.pop(k) for k in ("feature_weight", "feature_metric", "relation_weight") if k in args}
        kd = KDReplayPlugin(**args)
        if method == "kd-feature":
            return [kd, FeatureDistillationPlugin(kd, weight=extra["feature_weight"], metric=extra["feature_metric"])]
        return [kd, RelationDistillationPlugin(kd, weight=extra["relation_weight"])]
    return []


def make_strategy(
    method: str,
    model: nn.Module,
    settings: TrainSettings,
    args: dict[str, Any],
    seed: int = 0,
    extra_plugins: list | None = None,
    fast: bool = False,
):
    """An Avalanche strategy for ``method`` with plain SGD at ``settings.lr``.

    ``fast``: the same strategy on the tensor-native path (:mod:`ckd.training`).
    """
    from avalanche.training import DER, JointTraining, Naive
    from avalanche.training.plugins import EvaluationPlugin

    if fast:
        from ckd.training import TensorDER as DER, TensorJointTraining as JointTraining, TensorNaive as Naive

    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum)
    if method.startswith("kd-"):  # ckd plugins take the run's seed for their buffer
        args = {**args, "seed": seed}
    common: dict[str, Any] = dict(
        model=model,
        optimizer=optimizer,
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=settings.batch_size,
        train_epochs=settings.epochs,
        eval_mb_size=settings.eval_batch_size,
        device=settings.device,
        evaluator=EvaluationPlugin(loggers=[]),
    )
    plugins = list(extra_plugins or [])
    if method == "der":
        return DER(
            mem_size=args["mem_size"], batch_size_mem=args["replay_batch_size"],
            alpha=args["alpha"], beta=args["beta"], plugins=plugins, **common,
        )
    if method == "joint":
        return JointTraining(plugins=plugins, **common)
    return Naive(plugins=_plugins_for(method, args) + plugins, **common)
