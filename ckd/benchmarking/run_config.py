"""What a run is: :class:`RunConfig` (everything that affects its numbers), the stream
defaults it falls back on, and where its result file lies."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ckd.benchmarking.methods import LEGACY_KD_ARGS, LEGACY_REPLAY_ARGS, METHOD_DEFAULTS, resolve_method_args
from ckd.data.models import MODELS
from ckd.data.streams import available_streams, is_image_folder
from ckd.data.user_code import is_reference, load_callable
from ckd.distillation.ema import EMA_HALF_LIFE

__all__ = [
    "AMP_DTYPES",
    "EVAL_EMA_BY_STREAM",
    "EVAL_EMA_DEFAULT",
    "LOADERS",
    "PER_EXPERIENCE_ARGS",
    "RunConfig",
    "STREAM_DEFAULTS",
    "USER_STREAM_DEFAULTS",
    "checkpoint_path",
    "config_from_result",
    "has_result",
    "lock_path",
    "wait_notice",
    "result_path",
]


# Training settings by stream when a run does not give them. The MNIST family
# follows the DER paper's protocol (one epoch, plain SGD, stream batch 10 for
# Seq-MNIST and 128 for the 20-experience domain streams); the small digits
# stream needs a few epochs to learn each experience. The image streams follow
# the DER protocol too: ResNet-18, stream batch 32, 50 epochs per experience
# (100 on Tiny ImageNet), lr 0.03 (DER++'s tuned value on Seq-CIFAR-10).
STREAM_DEFAULTS: dict[str, dict[str, Any]] = {
    "split-digits": {"model": "mlp", "epochs": 3, "lr": 0.1, "batch_size": 10},
    "split-mnist": {"model": "mlp", "epochs": 1, "lr": 0.03, "batch_size": 10},
    "split-fmnist": {"model": "mlp", "epochs": 1, "lr": 0.03, "batch_size": 10},
    "permuted-mnist": {"model": "mlp", "epochs": 1, "lr": 0.1, "batch_size": 128},
    "rotated-mnist": {"model": "mlp", "epochs": 1, "lr": 0.1, "batch_size": 128},
    "split-cifar10": {"model": "resnet18", "epochs": 50, "lr": 0.03, "batch_size": 32},
    "split-cifar100": {"model": "resnet18", "epochs": 50, "lr": 0.03, "batch_size": 32},
    "split-tinyimagenet": {"model": "resnet18", "epochs": 100, "lr": 0.03, "batch_size": 32},
}


# A user's package.module:function stream has no measured defaults: only the model.
USER_STREAM_DEFAULTS: dict[str, Any] = {"model": "mlp"}


# Half-life of the EMA of the weights that scores every method (a fraction of an
# experience's training iterations; 0: score the trained weights). Chosen on validation
# splits (docs/tuning.md): 0.3 on class-incremental streams, 1.0 on the 20-experience
# domain streams. Every method gets it, and the trained weights are scored too.
EVAL_EMA_DEFAULT = EMA_HALF_LIFE


EVAL_EMA_BY_STREAM: dict[str, float] = {"permuted-mnist": 1.0, "rotated-mnist": 1.0}


AMP_DTYPES = ("bf16", "fp16")


# How a run reads its training data: "tensor", minibatches sliced from in-memory tensors
# (ckd.engines.training, when the stream's data are tensors), or "avalanche", Avalanche's DataLoader.
LOADERS = ("tensor", "avalanche")


# Method settings that may be one value per experience of the stream.
PER_EXPERIENCE_ARGS = ("alpha", "current_alpha")


@dataclass(frozen=True)
class RunConfig:
    """Everything that affects a run's numbers.

    ``method_args`` override the method's defaults (``ckd.benchmarking.methods.METHOD_DEFAULTS``).
    ``eval_every``: also evaluate every that many training iterations (0: only
    after each experience) for fine-grained forgetting curves.
    ``label`` names the setting in tables (default: the method name).
    ``model``, ``epochs``, ``lr`` and ``batch_size`` left as ``None`` take the stream's
    defaults (``STREAM_DEFAULTS``). ``stream`` and ``model`` may also name a user's
    ``package.module:function`` (see ``ckd.data.streams.make_stream``, ``ckd.data.models.make_model``);
    such a stream needs ``epochs``, ``lr`` and ``batch_size``.
    ``amp``: mixed precision, ``"bf16"`` or ``"fp16"`` (``ckd.engines.amp``): training and scoring
    forward passes under autocast, convolutional models laid out channels_last; ``None``: float32.
    ``amp_teachers``: the kd-* teachers' forward passes under that autocast too (``False``: in float32);
    ``None``: yes for a kd-* method whenever ``amp`` is set. Recorded for kd-* methods with ``amp``;
    their results written before the setting existed ran the teachers in float32 and read back so.
    ``checksum=False`` skips the MD5 checks of the dataset files (re-packed copies).
    ``threads``: intra-op CPU threads. The thread count changes floating-point
    reduction order, so it is part of the config: one thread by default makes
    CPU numbers identical across machines and lets suites run jobs side by side.
    ``loader``: ``"tensor"`` trains from in-memory tensors (``ckd.engines.training``),
    ``"avalanche"`` from Avalanche's DataLoader; the data order differs, so it is part of the config.
    ``cuda_graphs``: the model's training forward and backward passes replayed from CUDA graphs
    (``ckd.engines.cuda_graphs``; needs ``device="cuda"``).
    ``augmentation=False`` trains without the stream's augmentation (the image streams'
    crop and flip), as the online papers' "no augmentation" rows.
    ``eval_ema_half_life``: score an exponential moving average of the weights
    (``ckd.distillation.parts.weight_averaging.EMAEvaluationPlugin``, half-life as a fraction of an experience),
    whatever the method; the trained weights are scored as well (the result's
    ``trained_weights``). ``None``: the stream's default (``EVAL_EMA_BY_STREAM``); 0: off.
    """

    stream: str
    method: str
    seed: int = 0
    label: str | None = None
    model: str | None = None
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    eval_batch_size: int = 1000
    device: str = "cpu"
    task_labels: bool = False
    n_experiences: int | None = None
    validation_fraction: float = 0.0
    max_train_per_experience: int | None = None
    max_test_per_experience: int | None = None
    eval_every: int = 0
    threads: int = 1
    loader: str = "tensor"
    amp: str | None = None
    checksum: bool = True
    eval_ema_half_life: float | None = None
    augmentation: bool = True
    cuda_graphs: bool = False
    amp_teachers: bool | None = None
    method_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:

        if is_image_folder(self.stream) or is_reference(self.stream):
            if not is_image_folder(self.stream):
                load_callable(self.stream, "stream")
            missing = [n for n in ("epochs", "lr", "batch_size") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"stream {self.stream!r} is user-defined and has no defaults: give {', '.join(missing)}")
        elif self.stream not in available_streams():
            raise ValueError(
                f"unknown stream {self.stream!r}; available: {', '.join(available_streams())}, "
                "or package.module:function"
            )
        for name, value in STREAM_DEFAULTS.get(self.stream, USER_STREAM_DEFAULTS).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if is_reference(self.model):
            load_callable(self.model, "model")
        elif self.model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)} or package.module:function, got {self.model!r}")
        if self.amp not in (None, *AMP_DTYPES):
            raise ValueError(f"amp must be one of {AMP_DTYPES} or None, got {self.amp!r}")
        if not isinstance(self.checksum, bool):
            raise ValueError(f"checksum must be true or false, got {self.checksum!r}")
        if not isinstance(self.augmentation, bool):
            raise ValueError(f"augmentation must be true or false, got {self.augmentation!r}")
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be true or false, got {self.cuda_graphs!r}")
        if self.amp_teachers is not None and not isinstance(self.amp_teachers, bool):
            raise ValueError(f"amp_teachers must be true or false, got {self.amp_teachers!r}")
        if self.amp_teachers and self.amp is None:
            raise ValueError("amp_teachers runs the teachers under the run's autocast: set amp ('bf16' or 'fp16') too")
        if self.eval_ema_half_life is None:
            object.__setattr__(self, "eval_ema_half_life", EVAL_EMA_BY_STREAM.get(self.stream, EVAL_EMA_DEFAULT))
        half_life = self.eval_ema_half_life
        if isinstance(half_life, bool) or not isinstance(half_life, (int, float)) or not (0 <= half_life < math.inf):
            raise ValueError(f"eval_ema_half_life must be a number >= 0 (0: off), got {half_life!r}")
        object.__setattr__(self, "eval_ema_half_life", float(half_life))
        resolve_method_args(self.method, self.method_args)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {self.threads!r}")
        if not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise ValueError(f"eval_every must be an integer >= 0, got {self.eval_every!r}")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.loader not in LOADERS:
            raise ValueError(f"loader must be one of {LOADERS}, got {self.loader!r}")
        if self.cuda_graphs and not self.device.startswith("cuda"):
            raise ValueError(f"cuda_graphs needs device 'cuda', got device {self.device!r}")

    @property
    def name(self) -> str:
        return self.label or self.method

    def resolved(self) -> dict[str, Any]:
        """The config as written to the result: method defaults filled in."""

        out = asdict(self)
        out["method_args"] = resolve_method_args(self.method, self.method_args)
        out["label"] = self.name
        if out["loader"] == "avalanche":  # what results written before the tensor path used
            del out["loader"]
        # Settings added later are recorded only when set, so older results still match.
        for name, default in (("amp", None), ("checksum", True), ("eval_ema_half_life", 0.0), ("augmentation", True),
                              ("cuda_graphs", False)):
            if out[name] == default:
                del out[name]
        if self.amp is not None and self.method.startswith("kd-"):
            out["amp_teachers"] = self.teachers_under_amp
        else:
            del out["amp_teachers"]  # it acts on the kd-* teachers under autocast only
        return out

    @property
    def teachers_under_amp(self) -> bool:
        """Whether the teachers' forward passes run under the run's autocast (``amp_teachers``)."""
        if self.amp is None:
            return False
        return self.method.startswith("kd-") if self.amp_teachers is None else self.amp_teachers


def config_from_result(result: dict[str, Any], **overrides: Any) -> RunConfig:
    """The :class:`RunConfig` a result JSON was produced with (``overrides`` replace fields)."""

    known = {f.name for f in fields(RunConfig)}
    values = {k: v for k, v in result["config"].items() if k in known}
    method = values.get("method", "")
    if method.startswith("kd-") and "method_args" in values:
        # Results written before every setting was recorded: a missing key meant the old default.
        legacy = {k: v for k, v in LEGACY_KD_ARGS.items() if k in METHOD_DEFAULTS.get(method, {})}
        values["method_args"] = {**legacy, **values["method_args"]}
    if "method_args" in values:  # er, er-ace, der-authors: written when all rows shared one forward pass
        joint = {k: v for k, v in LEGACY_REPLAY_ARGS.items() if k in METHOD_DEFAULTS.get(method, {})}
        values["method_args"] = {**joint, **values["method_args"]}
    # Written when EMA scoring was a kd-* method setting, or before it existed (off).
    method_ema = dict(values.get("method_args", {})).pop("eval_ema_half_life", 0.0)
    if "method_args" in values:
        values["method_args"] = {k: v for k, v in values["method_args"].items() if k != "eval_ema_half_life"}
    values.setdefault("eval_ema_half_life", method_ema)
    values.setdefault("loader", "avalanche")  # written before the tensor path existed
    if method.startswith("kd-") and values.get("amp") is not None:
        values.setdefault("amp_teachers", False)  # written while the teachers ran in float32
    values.update(overrides)
    return RunConfig(**values)


def result_path(out_dir: str | os.PathLike, config: RunConfig) -> Path:
    safe = config.name.replace("/", "_").replace(" ", "_")
    stream = config.stream.replace(":", "_").replace("/", "_")
    return Path(out_dir) / f"{stream}__{safe}__seed{config.seed}.json"


def checkpoint_path(out_dir: str | os.PathLike, config: RunConfig) -> Path:
    """The checkpoint beside the result of ``config`` (``<result>.ckpt``) while it runs."""
    return result_path(out_dir, config).with_suffix(".ckpt")


def lock_path(out_dir: str | os.PathLike, config: RunConfig) -> Path:
    """The lock (``<result>.lock``, :func:`ckd.common.files.held_lock`) a process holds while it
    runs ``config`` into ``out_dir``, whichever scheduler runs it."""
    return result_path(out_dir, config).with_suffix(".lock")


def wait_notice(out_dir: str | os.PathLike, config: RunConfig) -> Callable[[], None]:
    """What a process prints (``held_lock``'s ``on_wait``) when it waits for another's run of ``config``."""
    name = result_path(out_dir, config).name

    def notice() -> None:
        print(f"waiting for {name}: another process is running it", file=sys.stderr, flush=True)

    return notice


def has_result(out_dir: str | os.PathLike, config: RunConfig) -> bool:
    """Whether ``result_path(out_dir, config)`` holds a finished result of this very config."""
    path = result_path(out_dir, config)
    try:
        existing = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    if not isinstance(existing, dict) or "config" not in existing:
        return False
    wanted = json.loads(json.dumps(config.resolved()))
    if existing["config"] == wanted:
        return True
    try:  # written in an older layout of the same settings (e.g. EMA scoring as a method setting)
        return json.loads(json.dumps(config_from_result(existing).resolved())) == wanted
    except (KeyError, TypeError, ValueError):
        return False
