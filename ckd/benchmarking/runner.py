"""Run one method on one stream with one seed, measure, and write the result JSON."""

from __future__ import annotations

import json
import math
import os
import platform
import random
import resource
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.core import SupervisedPlugin

from ckd.common.files import write_json_atomic
from ckd.distillation.ema import EMA_HALF_LIFE
from ckd.distillation.parts.weight_averaging import evaluation_model
from ckd.reports.metrics import compute_metrics

__all__ = [
    "AccuracyEvaluator",
    "RunConfig",
    "STREAM_DEFAULTS",
    "checkpoint_path",
    "config_from_result",
    "has_result",
    "result_path",
    "run",
    "run_to_file",
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
    ``checksum=False`` skips the MD5 checks of the dataset files (re-packed copies).
    ``threads``: intra-op CPU threads. The thread count changes floating-point
    reduction order, so it is part of the config: one thread by default makes
    CPU numbers identical across machines and lets suites run jobs side by side.
    ``loader``: ``"tensor"`` trains from in-memory tensors (``ckd.engines.training``),
    ``"avalanche"`` from Avalanche's DataLoader; the data order differs, so it is part of the config.
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
    method_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ckd.benchmarking.methods import resolve_method_args
        from ckd.data.models import MODELS
        from ckd.data.streams import available_streams, is_image_folder
        from ckd.data.user_code import is_reference, load_callable

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

    @property
    def name(self) -> str:
        return self.label or self.method

    def resolved(self) -> dict[str, Any]:
        """The config as written to the result: method defaults filled in."""
        from ckd.benchmarking.methods import resolve_method_args

        out = asdict(self)
        out["method_args"] = resolve_method_args(self.method, self.method_args)
        out["label"] = self.name
        if out["loader"] == "avalanche":  # what results written before the tensor path used
            del out["loader"]
        # Settings added later are recorded only when set, so older results still match.
        for name, default in (("amp", None), ("checksum", True), ("eval_ema_half_life", 0.0), ("augmentation", True)):
            if out[name] == default:
                del out[name]
        return out


def config_from_result(result: dict[str, Any], **overrides: Any) -> RunConfig:
    """The :class:`RunConfig` a result JSON was produced with (``overrides`` replace fields)."""
    from ckd.benchmarking.methods import LEGACY_KD_ARGS, LEGACY_REPLAY_ARGS, METHOD_DEFAULTS

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
    values.update(overrides)
    return RunConfig(**values)


def result_path(out_dir: str | os.PathLike, config: RunConfig) -> Path:
    safe = config.name.replace("/", "_").replace(" ", "_")
    stream = config.stream.replace(":", "_").replace("/", "_")
    return Path(out_dir) / f"{stream}__{safe}__seed{config.seed}.json"


def checkpoint_path(out_dir: str | os.PathLike, config: RunConfig) -> Path:
    """The checkpoint beside the result of ``config`` (``<result>.ckpt``) while it runs."""
    return result_path(out_dir, config).with_suffix(".ckpt")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class AccuracyEvaluator:
    """Accuracy of a model on every test experience of a stream, from in-memory tensors.

    Class-IL accuracy takes the argmax over all outputs; task-IL accuracy the
    argmax over the classes of the sample's own experience.
    """

    def __init__(self, stream, device: torch.device, batch_size: int, amp: str | None = None) -> None:
        from ckd.engines.amp import AMP_DTYPES

        self.device = device
        self.batch_size = batch_size
        self.autocast_dtype = AMP_DTYPES[amp] if amp is not None else None
        self.test_sets = [
            tuple(t.to(device) for t in stream.test_tensors(j)) for j in range(len(stream.benchmark.test_stream))
        ]
        n_out = stream.n_classes
        self.class_masks = torch.zeros(len(self.test_sets), n_out, dtype=torch.bool, device=device)
        for j, classes in enumerate(stream.classes_per_experience):
            self.class_masks[j, classes] = True

    @torch.inference_mode()
    def accuracies(self, model: torch.nn.Module) -> tuple[list[float], list[float]]:
        """Class-IL and task-IL accuracy per test experience. A multi-head model
        scores 0 on an experience whose task it has no head for yet."""
        from avalanche.models.dynamic_modules import MultiTaskModule
        from avalanche.models.utils import avalanche_forward

        was_training = model.training
        model.eval()
        class_il, task_il = [], []
        heads = set(model.known_train_tasks_labels) if isinstance(model, MultiTaskModule) else None
        for j, (x, y, t) in enumerate(self.test_sets):
            if heads is not None and not set(t.unique().tolist()) <= heads:
                class_il.append(0.0)
                task_il.append(0.0)
                continue
            correct = torch.zeros((), dtype=torch.long, device=self.device)
            correct_task = torch.zeros((), dtype=torch.long, device=self.device)
            for start in range(0, x.shape[0], self.batch_size):
                sl = slice(start, start + self.batch_size)
                with torch.autocast(self.device.type, self.autocast_dtype, enabled=self.autocast_dtype is not None):
                    logits = avalanche_forward(model, x[sl], t[sl]).float()
                correct += (logits.argmax(1) == y[sl]).sum()
                mask = self.class_masks[j, : logits.shape[1]]
                masked = logits.masked_fill(~mask, float("-inf"))
                correct_task += (masked.argmax(1) == y[sl]).sum()
            class_il.append(correct.item() / max(x.shape[0], 1))
            task_il.append(correct_task.item() / max(x.shape[0], 1))
        model.train(was_training)
        return class_il, task_il


def _peak_cpu_memory_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _versions() -> dict[str, str]:
    import avalanche

    import ckd

    return {
        "ckd": ckd.__version__,
        "torch": torch.__version__,
        "avalanche": avalanche.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model (``/proc/cpuinfo`` on Linux) with the thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} thread(s), {os.cpu_count()} cores)"


def _params_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def run(
    config: RunConfig,
    data_root: str | os.PathLike | None = None,
    progress: bool = False,
    loggers: Sequence[str] = (),
    log_dir: str | os.PathLike | None = None,
    on_experience: Callable[[int, int, list[float]], None] | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train ``config.method`` over the stream and return the result record.

    A run whose parameters become NaN/inf is not an error: it is recorded with
    ``"diverged": true`` and the experience where it happened (the accuracies
    are what that model scores).

    ``loggers``: names of Avalanche loggers (:data:`ckd.benchmarking.loggers.LOGGERS`) writing
    under ``log_dir``. The strategy then also runs ``strategy.eval`` on the test
    stream after each experience, to feed them; the result is the same.

    ``on_experience(i, n_experiences, accuracies)`` is called after each experience
    ``i`` with that row of the accuracy matrix (a sweep's scheduler reads it to stop
    poor settings early).

    ``checkpoint``: a file where the run saves its state after each experience
    (:mod:`ckd.benchmarking.checkpoint`: model, optimizer, every plugin's state, random generators,
    the accuracy rows so far) and from which this same run, started again, resumes: the
    result is that of an uninterrupted run. A checkpoint of other settings is ignored and
    replaced. Joint training, runs with loggers and methods whose Avalanche plugin has no
    ``state_dict`` (``lwf``, ``ewc``) write none and start from the beginning.
    """
    from ckd.benchmarking.checkpoint import global_rng_state, load_training_state, set_global_rng_state, training_state
    from ckd.benchmarking.loggers import close_loggers, make_loggers
    from ckd.benchmarking.methods import TrainSettings, make_strategy, resolve_method_args
    from ckd.data.augmentation import AugmentationPlugin
    from ckd.data.models import make_model
    from ckd.data.streams import make_stream
    from ckd.distillation.parts.weight_averaging import EMAEvaluationPlugin
    from ckd.engines.amp import MixedPrecisionPlugin

    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch.cuda.is_available() is False")
    torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    stream = make_stream(
        config.stream,
        seed=config.seed,
        data_root=data_root,
        n_experiences=config.n_experiences,
        task_labels=config.task_labels,
        validation_fraction=config.validation_fraction,
        max_train_per_experience=config.max_train_per_experience,
        max_test_per_experience=config.max_test_per_experience,
        checksum=config.checksum,
    )
    model = make_model(config.model, stream.input_shape, stream.n_classes)
    if config.amp is not None and any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)  # oneDNN's fast layout for reduced-precision convs
    evaluator = AccuracyEvaluator(stream, device, config.eval_batch_size, config.amp)
    train_stream = stream.benchmark.train_stream
    n_exp = len(train_stream)
    iterations = [math.ceil(len(e.dataset) / config.batch_size) * config.epochs for e in train_stream]

    extra = []
    bar = _progress_bar(sum(iterations), f"{config.stream} {config.name} seed {config.seed}", progress)
    if bar is not None:
        extra.append(_ProgressPlugin(bar))
    curve = None
    if config.eval_every:
        curve = _PeriodicEvaluation(evaluator, config.eval_every)
        extra.append(curve)
    if stream.augmentation is not None and config.augmentation:  # every row the model receives, replayed ones included
        extra.append(AugmentationPlugin(stream.augmentation))
    if config.amp is not None:
        extra.append(MixedPrecisionPlugin(config.amp, device.type))
    if config.eval_ema_half_life > 0:
        extra.append(EMAEvaluationPlugin(half_life=config.eval_ema_half_life, seed=config.seed))
    diagnostics = None
    if config.method.startswith("kd-") and config.method != "kd-replay-cached":
        diagnostics = _TeacherDiagnostics(evaluator)
    settings = TrainSettings(config.lr, config.batch_size, config.epochs, config.eval_batch_size, config.device)
    method_args = resolve_method_args(config.method, config.method_args)
    for key in PER_EXPERIENCE_ARGS:
        value = method_args.get(key)
        if isinstance(value, (list, tuple)) and len(value) != n_exp:
            raise ValueError(
                f"{key} is a per-experience list of {len(value)} values but {config.stream} has {n_exp} experiences"
            )
    if loggers and log_dir is None:
        raise ValueError("loggers need a log_dir to write to")
    run_name = f"{config.stream}__{config.name}__seed{config.seed}"
    avalanche_loggers = make_loggers(loggers, log_dir, run_name) if loggers else []
    strategy = make_strategy(
        config.method, model, settings, method_args, seed=config.seed, extra_plugins=extra, loggers=avalanche_loggers,
        fast=config.loader == "tensor",
    )
    if diagnostics is not None:  # must see the teacher before the KD plugin replaces it
        strategy.plugins.insert(0, diagnostics)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    scores = _Scores(evaluator)
    times = []
    diverged_at = None
    saver = _run_checkpoint(checkpoint, config, strategy, train_stream, loggers)
    saved = saver.load() if saver is not None else None
    done, earlier_wall, resumed_at = 0, 0.0, []
    if saved is not None:
        done = saved["experiences"]
        load_training_state(strategy, saved["training"], [train_stream[j] for j in range(done)])
        scores.load_state_dict(saved["scores"])
        times, diverged_at, earlier_wall = saved["times"], saved["diverged_at"], saved["wall"]
        resumed_at = [*saved["resumed_at"], done]
        set_global_rng_state(saved["rng"])
        if bar is not None:
            bar.update(sum(iterations[:done]))
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="avalanche")
            if config.method == "joint":
                t0 = time.perf_counter()
                strategy.train(train_stream)
                scores.add(strategy, repeat=n_exp)
                if avalanche_loggers:
                    strategy.eval(stream.benchmark.test_stream)
                times = [time.perf_counter() - t0]
                if not _params_finite(strategy.model):
                    diverged_at = n_exp - 1
            else:
                for i, experience in enumerate(train_stream):
                    if i < done:  # restored from the checkpoint
                        continue
                    # Seeded per experience so that a run resumed between experiences
                    # replays the same shuffles as an uninterrupted one.
                    torch.manual_seed(config.seed * 1000 + i)
                    t0 = time.perf_counter()
                    strategy.train(experience)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    times.append(time.perf_counter() - t0)
                    row = scores.add(strategy)
                    if on_experience is not None:
                        on_experience(i, n_exp, row)
                    if avalanche_loggers:
                        strategy.eval(stream.benchmark.test_stream)
                    if diverged_at is None and not _params_finite(strategy.model):
                        diverged_at = i
                    if saver is not None and i + 1 < n_exp:
                        saver.save({
                            "experiences": i + 1, "training": training_state(strategy), "rng": global_rng_state(),
                            "scores": scores.state_dict(), "times": times, "diverged_at": diverged_at,
                            "wall": earlier_wall + time.perf_counter() - start, "resumed_at": resumed_at,
                        })
    finally:
        if bar is not None:
            bar.close()
        close_loggers(avalanche_loggers)
    wall = earlier_wall + time.perf_counter() - start

    return result_record(
        config, stream, scores.matrix, scores.task_matrix,
        scored_model=evaluation_model(strategy)[1],
        trained_weights=scores.trained_weights,
        diverged_at=diverged_at,
        curve=curve.record() if curve is not None else None,
        diagnostics=diagnostics.records if diagnostics is not None else None,
        wall=wall, times=times, iterations=iterations, device=device, resumed_at=resumed_at,
    )


def _run_checkpoint(path, config: RunConfig, strategy, train_stream, loggers) -> Any:
    """The run's :class:`ckd.benchmarking.checkpoint.RunCheckpoint` at ``path``, or ``None`` when it writes none."""
    from ckd.benchmarking.checkpoint import RunCheckpoint, checkpoint_refusal

    if path is None or loggers or config.method == "joint" or checkpoint_refusal(strategy) is not None:
        return None
    key = {
        "config": json.loads(json.dumps(config.resolved())), "versions": _versions(),
        "plugins": [type(p).__qualname__ for p in strategy.plugins],  # the code that builds the strategy
    }
    return RunCheckpoint(path, key, train_stream)


def result_record(
    config: RunConfig,
    stream,
    matrix: list[list[float]],
    task_matrix: list[list[float]],
    *,
    scored_model: str,
    trained_weights: tuple[list[list[float]], list[list[float]]] | None = None,
    diverged_at: int | None,
    curve: dict | None,
    diagnostics: list | None,
    wall: float,
    times: list[float],
    iterations: list[int],
    device: torch.device,
    resumed_at: Sequence[int] = (),
) -> dict[str, Any]:
    """The result record of one run (what :func:`run` returns and the result JSON holds).

    ``trained_weights``: the class- and task-IL accuracy matrices of the trained
    weights when the scored model is another one (an EMA of the weights); the record
    then holds them, with their metrics, under ``"trained_weights"``.
    ``resumed_at``: the experiences at which the run resumed from a checkpoint (its
    ``wall_time_s`` adds up the processes' times; its peak memory is the last one's).
    """
    metrics = compute_metrics(matrix)
    task_metrics = compute_metrics(task_matrix) if stream.scenario != "domain-il" else None
    trained = None
    if trained_weights is not None:
        trained_matrix, trained_task_matrix = trained_weights
        trained_task = compute_metrics(trained_task_matrix) if task_metrics else None
        trained = {
            "accuracy_matrix": trained_matrix,
            **compute_metrics(trained_matrix),
            "task_il_accuracy_matrix": trained_task_matrix if trained_task else None,
            "final_average_task_il_accuracy": trained_task["final_average_accuracy"] if trained_task else None,
        }
    return {
        "stream": config.stream,
        "method": config.method,
        "label": config.name,
        "seed": config.seed,
        "scenario": stream.scenario,
        "config": config.resolved(),
        "experience_classes": stream.classes_per_experience,
        "accuracy_matrix": matrix,
        **metrics,
        "task_il_accuracy_matrix": task_matrix if task_metrics else None,
        "final_average_task_il_accuracy": task_metrics["final_average_accuracy"] if task_metrics else None,
        "scored_model": scored_model,
        "trained_weights": trained,
        "diverged": diverged_at is not None,
        "diverged_at_experience": diverged_at,
        "curve": curve,
        "diagnostics": diagnostics,
        "wall_time_s": wall,
        "wall_time_per_experience_s": times,
        "resumed_at_experiences": list(resumed_at),
        "iterations_per_experience": iterations,
        "peak_cpu_memory_mb": _peak_cpu_memory_mb(),
        "peak_cuda_memory_mb": (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
        "device": device_name(device),
        "versions": _versions(),
    }


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


def run_to_file(
    config: RunConfig,
    out_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    progress: bool = False,
    skip_existing: bool = True,
    loggers: Sequence[str] = (),
    checkpoints: bool = True,
) -> tuple[Path, bool]:
    """Run and write ``result_path(out_dir, config)`` atomically.

    Returns ``(path, ran)``. With ``skip_existing`` an existing result whose
    config equals this one is kept and nothing runs. ``loggers`` (see :func:`run`)
    write into ``out_dir/logs/<result file name without .json>/``, emptied first.
    ``checkpoints``: the run keeps a checkpoint beside its result (:func:`checkpoint_path`)
    after each experience and, interrupted and run again, resumes from it (see :func:`run`);
    the checkpoint is removed once the result is written.
    """
    path = result_path(out_dir, config)
    ckpt = checkpoint_path(out_dir, config)
    if skip_existing and has_result(out_dir, config):
        ckpt.unlink(missing_ok=True)  # left by a run stopped between writing its result and this
        return path, False
    log_dir = Path(out_dir) / "logs" / path.stem
    if loggers:
        shutil.rmtree(log_dir, ignore_errors=True)
    result = run(config, data_root=data_root, progress=progress, loggers=loggers, log_dir=log_dir,
                 checkpoint=ckpt if checkpoints else None)
    write_json_atomic(path, result)
    ckpt.unlink(missing_ok=True)
    return path, True


class _Scores:
    """The accuracy matrices of a run: the model it is scored with (an EMA of the
    weights when the strategy carries one) and, when that is not the trained model,
    the trained weights too, so every run can be compared both ways."""

    def __init__(self, evaluator: AccuracyEvaluator) -> None:
        self.evaluator = evaluator
        self.matrix: list[list[float]] = []
        self.task_matrix: list[list[float]] = []
        self.trained: tuple[list[list[float]], list[list[float]]] = ([], [])

    def add(self, strategy, repeat: int = 1) -> list[float]:
        """Score after an experience (``repeat`` rows for joint training); returns the scored row."""
        model, name = evaluation_model(strategy)
        row, task_row = self.evaluator.accuracies(model)
        self.matrix += [row] * repeat
        self.task_matrix += [task_row] * repeat
        if name != "model":
            trained_row, trained_task_row = self.evaluator.accuracies(strategy.model)
            self.trained[0].extend([trained_row] * repeat)
            self.trained[1].extend([trained_task_row] * repeat)
        return row

    @property
    def trained_weights(self) -> tuple[list[list[float]], list[list[float]]] | None:
        return self.trained if self.trained[0] else None

    def state_dict(self) -> dict:
        return {"matrix": self.matrix, "task_matrix": self.task_matrix, "trained": self.trained}

    def load_state_dict(self, state: dict) -> None:
        self.matrix, self.task_matrix, self.trained = state["matrix"], state["task_matrix"], state["trained"]


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="it", file=sys.stderr, mininterval=1.0, leave=False)


class _ProgressPlugin(SupervisedPlugin):
    def __init__(self, bar) -> None:
        super().__init__()
        self.bar = bar

    def after_training_iteration(self, strategy, **kwargs) -> None:
        self.bar.update(1)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class _TeacherDiagnostics(SupervisedPlugin):
    """At the end of each experience, before the distillation plugin replaces its teacher,
    compare the student with the teacher it was distilled from (that of the strategy's
    ``ckd.distillation.diagnostics.Distiller``): on the held-out sets of the experiences the teacher
    was trained on (``ckd.distillation.diagnostics.compare_with_teacher``) and, for a plugin that
    replays, on its buffer (``buffer_agreement``, ``buffer_kl``)."""

    def __init__(self, evaluator: AccuracyEvaluator) -> None:
        super().__init__()
        self.evaluator = evaluator
        self.records: list[dict | None] = []

    def after_training_exp(self, strategy, **kwargs) -> None:
        from ckd.distillation.diagnostics import compare_with_teacher, find_distiller

        distiller = find_distiller(strategy.plugins)
        teacher = distiller.teacher if distiller is not None else None
        current = strategy.experience.current_experience
        if teacher is None or current == 0:
            self.records.append(None)
            return
        x, y, t = (torch.cat(parts) for parts in zip(*self.evaluator.test_sets[:current]))
        dtype = self.evaluator.autocast_dtype  # the run's scoring precision
        with torch.autocast(self.evaluator.device.type, dtype, enabled=dtype is not None):
            report = compare_with_teacher(strategy.model, teacher, x, t, y, distiller.temperature)
            buffer = getattr(distiller, "buffer", None)
            if buffer is not None and not buffer.is_empty:
                on_buffer = compare_with_teacher(strategy.model, teacher, buffer.x, buffer.task, buffer.y,
                                                 distiller.temperature)
                report["buffer_agreement"], report["buffer_kl"] = on_buffer["agreement"], on_buffer["kl"]
        # NaN (an empty teacher-right or teacher-wrong part) is null in the JSON.
        self.records.append({k: (None if math.isnan(v) else v) for k, v in report.items()})

    def state_dict(self) -> dict:
        return {"records": self.records}

    def load_state_dict(self, state: dict) -> None:
        self.records = state["records"]


class _PeriodicEvaluation(SupervisedPlugin):
    """Evaluate on every test experience each ``every`` training iterations."""

    def __init__(self, evaluator: AccuracyEvaluator, every: int) -> None:
        super().__init__()
        self.evaluator = evaluator
        self.every = every
        self.iteration = 0
        self.points: list[tuple[int, int, list[float]]] = []

    def after_training_iteration(self, strategy, **kwargs) -> None:
        self.iteration += 1
        if self.iteration % self.every == 0:
            accuracies, _ = self.evaluator.accuracies(evaluation_model(strategy)[0])
            self.points.append((self.iteration, strategy.experience.current_experience, accuracies))

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "points": self.points}

    def load_state_dict(self, state: dict) -> None:
        self.iteration, self.points = state["iteration"], state["points"]

    def record(self) -> dict[str, list]:
        return {
            "every": self.every,
            "iteration": [p[0] for p in self.points],
            "experience": [p[1] for p in self.points],
            "accuracy": [p[2] for p in self.points],
        }
