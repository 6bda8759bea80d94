"""Continual-learning methods by name: each builds an Avalanche strategy.

Every builder takes the model, the run's training settings and its own
arguments (documented defaults in ``METHOD_DEFAULTS``; unknown keys are errors).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from avalanche.training import DER, JointTraining, Naive
from avalanche.training.plugins import EWCPlugin, LwFPlugin
from avalanche.training.storage_policy import ClassBalancedBuffer, ExperienceBalancedBuffer, ReservoirSamplingBuffer
from torch import nn

from ckd.benchmarking.loggers import make_evaluator
from ckd.distillation.config import KDReplayConfig
from ckd.distillation.ema import EMA_HALF_LIFE
from ckd.distillation.parts.current_data import AsymmetricCrossEntropyPlugin, CurrentDistillationPlugin
from ckd.distillation.parts.feature_distillation import FeatureDistillationPlugin, RelationDistillationPlugin
from ckd.distillation.parts.logit_matching import LogitMatchingPlugin
from ckd.distillation.parts.weight_aligning import WeightAligningPlugin
from ckd.distillation.plugin import KDReplayPlugin
from ckd.distillation.replay import (
    REPLAY_POLICIES,
    DarkExperienceReplayPlugin,
    ERACEPlugin,
    ExperienceReplayPlugin,
    OnlineReplayPlugin,
)
from ckd.distillation.teachers import make_teacher
from ckd.engines.training import TensorDER, TensorJointTraining, TensorNaive

__all__ = ["LEGACY_KD_ARGS", "LEGACY_REPLAY_ARGS", "METHOD_DEFAULTS", "TrainSettings", "available_methods", "make_strategy", "resolve_method_args"]


@dataclass(frozen=True)
class TrainSettings:
    lr: float
    batch_size: int
    epochs: int
    eval_batch_size: int
    device: str
    momentum: float = 0.0


def _kd_defaults() -> dict[str, Any]:
    """The plugin's own defaults (``KDReplayConfig``, the one source) and the parts'."""
    plugin = {f.name: f.default for f in fields(KDReplayConfig) if f.name != "seed"}
    return {**plugin, **_PART_DEFAULTS}


# Settings of the parts a kd-* method composes; off unless a method turns them on.
# (Scoring with an EMA of the weights is a run setting for every method: RunConfig.eval_ema_half_life.)
# known_classes_only, current_experience_targets, n_teachers, ensemble, ema_half_life: the teacher part's.
# logit_weight > 0: MSE on the replayed logits (LogitMatchingPlugin).
# current_alpha > 0: distillation on the current samples (CurrentDistillationPlugin), on the teacher's
# known classes (current_known_classes_only) or on every output.
# current_classes_only: ER-ACE's asymmetric CE (AsymmetricCrossEntropyPlugin).
# weight_aligning: rescale the new classes' output rows after each experience (WeightAligningPlugin).
_PART_DEFAULTS: dict[str, Any] = {
    "known_classes_only": False,
    "n_teachers": 1,
    "ensemble": "own",
    "ema_half_life": EMA_HALF_LIFE,
    "logit_weight": 0.0,
    "current_alpha": 0.0,
    "current_known_classes_only": True,
    "current_classes_only": False,
    "weight_aligning": False,
    "current_experience_targets": False,
}

# What a kd-* result written before the parts existed meant by a missing key
# (the plugin's defaults then): ``config_from_result`` fills these in.
LEGACY_KD_ARGS: dict[str, Any] = {
    **_PART_DEFAULTS,
    "teacher": "snapshot",
    "known_classes_only": True,
    "current_experience_targets": True,
    "beta": 0.0,
    "policy": "class_balanced",
    "replay_batch_size": 32,
    "temperature": 2.0,
}

_KD = _kd_defaults()

# Defaults follow the DER paper's tuned Seq-MNIST settings where they exist; the kd-*
# methods start from the plugin's measured defaults.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "naive": {},
    "joint": {},
    "replay": {"mem_size": 500, "replay_batch_size": 10, "policy": "reservoir"},
    "lwf": {"alpha": 1.0, "temperature": 2.0},
    "ewc": {"ewc_lambda": 100.0},
    "der": {"mem_size": 500, "replay_batch_size": 10, "alpha": 1.0, "beta": 0.0},
    "der-authors": {"mem_size": 500, "replay_batch_size": 10, "alpha": 1.0, "beta": 0.5, "joint_forward": False},
    "er-ace": {"mem_size": 500, "replay_batch_size": 10, "joint_forward": False},
    "er": {"mem_size": 500, "replay_batch_size": 10, "joint_forward": False, "earlier_experiences_only": False},
    "kd-replay": dict(_KD),
    "kd-ema": {**_KD, "teacher": "ema"},
    "kd-feature": {**_KD, "feature_weight": 1.0, "feature_metric": "l2"},
    "kd-relation": {**_KD, "relation_weight": 1.0},
    "kd-lwf": {"current_alpha": 1.0, "temperature": 2.0},
    "kd-replay-lwf": {**_KD, "current_alpha": 1.0},
    "kd-multi-teacher": {**_KD, "n_teachers": 4, "ensemble": "own"},
    "kd-replay-cached": {**_KD, "teacher": "cached"},
}


# Methods whose buffer is ckd's (seeded with the run's seed) outside the kd-* family.
_CKD_BUFFER_METHODS = ("er", "er-ace", "der-authors")

# What an er, er-ace or der-authors result written before the replayed rows had forward
# passes of their own meant by a missing key (one pass for all rows): ``config_from_result``
# fills it in, and an er result written before ``earlier_experiences_only`` replayed every experience.
LEGACY_REPLAY_ARGS: dict[str, Any] = {"joint_forward": True, "earlier_experiences_only": False}


def available_methods() -> list[str]:
    return sorted(METHOD_DEFAULTS)


def resolve_method_args(method: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The method's defaults updated with ``overrides``; unknown methods or keys raise."""
    if method not in METHOD_DEFAULTS:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(available_methods())}")
    args = dict(METHOD_DEFAULTS[method])
    for key, value in (overrides or {}).items():
        if key == "eval_ema_half_life":
            raise ValueError("eval_ema_half_life is a run setting for every method now: give it beside the "
                             "stream (--eval-ema, or eval_ema_half_life under [[run]]), not among the method's")
        if key not in args:
            allowed = ", ".join(sorted(args)) or "none"
            raise ValueError(f"method {method!r} has no setting {key!r} (settings: {allowed})")
        args[key] = value
    return args


def _plugins_for(method: str, args: dict[str, Any]) -> list:
    args = dict(args)
    if method in ("er", "er-ace"):
        keys = ("mem_size", "replay_batch_size", "seed", "joint_forward")
        if method == "er":
            return [OnlineReplayPlugin(**{k: args[k] for k in (*keys, "earlier_experiences_only")})]
        return [ERACEPlugin(**{k: args[k] for k in keys})]
    if method == "der-authors":
        return [DarkExperienceReplayPlugin(
            **{k: args[k] for k in ("mem_size", "replay_batch_size", "alpha", "beta", "seed", "joint_forward")}
        )]
    if method == "replay":
        if args["policy"] not in REPLAY_POLICIES:
            raise ValueError(f"replay policy must be one of {REPLAY_POLICIES}, got {args['policy']!r}")
        storage = {
            "reservoir": lambda: ReservoirSamplingBuffer(args["mem_size"]),
            "experience_balanced": lambda: ExperienceBalancedBuffer(args["mem_size"], adaptive_size=True),
            "class_balanced": lambda: ClassBalancedBuffer(args["mem_size"], adaptive_size=True),
        }[args["policy"]]()
        return [ExperienceReplayPlugin(args["mem_size"], batch_size_mem=args["replay_batch_size"], storage_policy=storage)]
    if method == "lwf":
        return [LwFPlugin(alpha=args["alpha"], temperature=args["temperature"])]
    if method == "ewc":
        return [EWCPlugin(ewc_lambda=args["ewc_lambda"])]
    if method == "kd-lwf":
        return [CurrentDistillationPlugin(alpha=args["current_alpha"], temperature=args["temperature"])]
    if method.startswith("kd-"):
        return _kd_plugins(method, args)
    return []


def _kd_plugins(method: str, args: dict[str, Any]) -> list:
    """A KDReplayPlugin with its teacher part, and the parts the settings turn on."""
    name = "cached" if method == "kd-replay-cached" else args["teacher"]
    if name == "snapshot" and args["n_teachers"] > 1:
        name = "ensemble"
    if args["current_alpha"] and name not in ("snapshot", "ensemble", "ema"):
        raise ValueError(f"current_alpha > 0 needs a teacher model (snapshot, ensemble or ema), got teacher={name!r}")
    teacher_settings = {
        "snapshot": {k: args[k] for k in ("known_classes_only", "current_experience_targets")},
        "cached": {"known_classes_only": args["known_classes_only"]},
        "own": {"known_classes_only": args["known_classes_only"]},
        "ensemble": {
            k: args[k] for k in ("n_teachers", "ensemble", "known_classes_only", "current_experience_targets")
        },
        "ema": {"half_life": args["ema_half_life"], "seed": args["seed"]},
    }.get(name, {})
    config = KDReplayConfig(
        **{k: args[k] for k in ("mem_size", "replay_batch_size", "alpha", "temperature", "beta", "policy", "seed")},
        teacher=name,
    )
    kd = KDReplayPlugin(config=config, teacher=make_teacher(name, **teacher_settings))
    plugins: list = [kd]
    if args["weight_aligning"]:
        plugins.insert(0, WeightAligningPlugin())  # before the teacher snapshot
    if method in ("kd-feature", "kd-relation"):
        if method == "kd-feature":
            plugins.append(FeatureDistillationPlugin(kd, weight=args["feature_weight"], metric=args["feature_metric"]))
        else:
            plugins.append(RelationDistillationPlugin(kd, weight=args["relation_weight"]))
    if args["logit_weight"] > 0:
        plugins.append(LogitMatchingPlugin(kd, weight=args["logit_weight"]))
    if args["current_classes_only"]:
        plugins.append(AsymmetricCrossEntropyPlugin())
    if args["current_alpha"]:
        plugins.append(CurrentDistillationPlugin(alpha=args["current_alpha"], temperature=args["temperature"], kd=kd,
                                                 known_classes_only=args["current_known_classes_only"]))
    return plugins


def make_strategy(
    method: str,
    model: nn.Module,
    settings: TrainSettings,
    args: dict[str, Any],
    seed: int = 0,
    extra_plugins: list | None = None,
    fast: bool = False,
    loggers: list | tuple = (),
):
    """An Avalanche strategy for ``method`` with plain SGD at ``settings.lr``.

    ``fast``: the same strategy on the tensor-native path (:mod:`ckd.engines.training`).
    ``loggers``: Avalanche loggers, fed by the evaluator of :func:`ckd.benchmarking.loggers.make_evaluator`.
    """
    der, joint, naive = (TensorDER, TensorJointTraining, TensorNaive) if fast else (DER, JointTraining, Naive)

    # foreach: one update over every tensor, the per-tensor loop's arithmetic (the CPU default is that loop)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum, foreach=True)
    if method.startswith("kd-") or method in _CKD_BUFFER_METHODS:  # ckd plugins take the run's seed for their buffer
        args = {**args, "seed": seed}
    common: dict[str, Any] = dict(
        model=model,
        optimizer=optimizer,
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=settings.batch_size,
        train_epochs=settings.epochs,
        eval_mb_size=settings.eval_batch_size,
        device=settings.device,
    )
    plugins = list(extra_plugins or [])
    if method not in ("der", "joint"):
        plugins = _plugins_for(method, args) + plugins
    common["evaluator"] = make_evaluator(loggers, plugins)
    if method == "der":
        return der(
            mem_size=args["mem_size"], batch_size_mem=args["replay_batch_size"],
            alpha=args["alpha"], beta=args["beta"], plugins=plugins, **common,
        )
    if method == "joint":
        return joint(plugins=plugins, **common)
    return naive(plugins=plugins, **common)
