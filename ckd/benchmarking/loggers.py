"""Avalanche loggers by name, and the evaluation plugin that feeds them.

``text`` writes ``log.txt``, ``csv`` the ``csv/`` folder of Avalanche's
:class:`~avalanche.logging.CSVLogger` (``training_results.csv``, with a ``distillation_loss``
column, and ``eval_results.csv``),
``tensorboard`` event files under ``tensorboard/``, ``wandb`` a Weights & Biases
run under ``wandb/``, offline unless ``WANDB_MODE`` or ``WANDB_API_KEY`` is set.
Every path is inside the run's log folder.
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Sequence
from pathlib import Path

from avalanche.evaluation.metric_results import AlternativeValues
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics, loss_metrics
from avalanche.logging import CSVLogger, TensorboardLogger, TextLogger, WandBLogger
from avalanche.training.plugins import EvaluationPlugin

from ckd.distillation.diagnostics import find_distiller
from ckd.distillation.parts.distillation_metrics import DistillationLossMetric, DistillationMetrics
from ckd.distillation.plugin import KDReplayPlugin

__all__ = ["LOGGERS", "check_loggers", "close_loggers", "make_evaluator", "make_loggers"]

LOGGERS = ("text", "csv", "tensorboard", "wandb")


def check_loggers(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` without repeats, in order; an unknown name is an error."""
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ValueError(f"unknown logger(s) {unknown}; available: {', '.join(LOGGERS)}")
    return tuple(dict.fromkeys(names))


def make_loggers(names: Sequence[str], log_dir: str | os.PathLike, run_name: str) -> list:
    """One Avalanche logger per name, writing under ``log_dir``; ``run_name`` names the W&B run."""
    log_dir = Path(log_dir)
    loggers = []
    for name in check_loggers(names):
        log_dir.mkdir(parents=True, exist_ok=True)
        if name == "text":
            loggers.append(TextLogger(open(log_dir / "log.txt", "w", encoding="utf-8")))
        elif name == "csv":
            loggers.append(_CSVLogger(str(log_dir / "csv")))
        elif name == "tensorboard":
            loggers.append(TensorboardLogger(log_dir / "tensorboard"))
        else:
            loggers.append(_wandb_logger(log_dir, run_name))
    return loggers


class _CSVLogger(CSVLogger):
    """Avalanche's CSV logger, its ``training_results.csv`` with one more column,
    ``distillation_loss``: each epoch's ``KD_Loss_Epoch`` (:class:`ckd.distillation.parts.distillation_metrics.DistillationLossMetric`),
    empty for an epoch that distilled nothing."""

    COLUMNS = ("training_exp", "epoch", "training_accuracy", "val_accuracy", "training_loss", "val_loss",
               "distillation_loss")

    def __init__(self, log_folder: str) -> None:
        super().__init__(log_folder)
        self.training_file.close()  # Avalanche's header, written again with the column
        self.training_file = open(os.path.join(self.log_folder, "training_results.csv"), "w")
        print(*self.COLUMNS, sep=",", file=self.training_file, flush=True)
        self._kd_loss = ""

    def after_training_epoch(self, strategy, metric_values, **kwargs) -> None:
        self._kd_loss = next((self._val_to_str(v.value) for v in metric_values
                              if v.name.startswith("KD_Loss_Epoch/train_phase")), "")
        super().after_training_epoch(strategy, metric_values, **kwargs)

    def print_train_metrics(self, training_exp, epoch, train_acc, val_acc, train_loss, val_loss) -> None:
        values = (self._val_to_str(v) for v in (train_acc, val_acc, train_loss, val_loss))
        print(training_exp, epoch, *values, self._kd_loss, sep=",", file=self.training_file, flush=True)


class _WandBLogger(WandBLogger):
    """Avalanche 0.6's W&B logger, for current wandb releases: it logs numbers only
    (Avalanche's own version looks up ``wandb.viz``, gone from wandb)."""

    def log_single_metric(self, name, value, x_plot) -> None:
        if isinstance(value, AlternativeValues):
            value = value.best_supported_value(float, int)
        if isinstance(value, (float, int)):
            self.step = x_plot
            self.wandb.log({name: value}, step=x_plot)


def _wandb_logger(log_dir: Path, run_name: str) -> WandBLogger:
    configured = "WANDB_MODE" in os.environ or "WANDB_API_KEY" in os.environ
    params = {"id": secrets.token_hex(4)}  # else Avalanche calls wandb.util.generate_id, gone from wandb
    if not configured:
        params["mode"] = "offline"
    return _WandBLogger(project_name="ckd", run_name=run_name, dir=str(log_dir), save_code=False, params=params)


def close_loggers(loggers: Sequence) -> None:
    """Flush and close what the loggers hold open (files, event writers, the W&B run)."""
    for logger in loggers:
        if hasattr(logger, "close"):  # CSVLogger
            logger.close()
        writer = getattr(logger, "writer", None)  # TensorboardLogger
        if writer is not None:
            writer.close()
        file = getattr(logger, "file", None)  # TextLogger
        if file is not None and not file.closed:
            file.close()
        wandb = getattr(logger, "wandb", None)  # WandBLogger
        if wandb is not None and wandb.run is not None:
            wandb.finish()


def make_evaluator(loggers: Sequence = (), plugins: Sequence = ()) -> EvaluationPlugin:
    """The strategy's Avalanche ``EvaluationPlugin``.

    With loggers: accuracy, loss and forgetting per epoch, experience and stream,
    :class:`ckd.distillation.parts.distillation_metrics.DistillationMetrics` for the first plugin among
    ``plugins`` that distils from a teacher (:func:`ckd.distillation.diagnostics.find_distiller`),
    and :class:`ckd.distillation.parts.distillation_metrics.DistillationLossMetric` for the first ``KDReplayPlugin``.
    Without: no metric at all (the ckd runner scores the model itself), and no
    "no loggers" warning.
    """
    if not loggers:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No loggers specified", category=UserWarning)
            return EvaluationPlugin(loggers=[])
    metrics = [
        accuracy_metrics(epoch=True, experience=True, stream=True),
        loss_metrics(epoch=True, experience=True, stream=True),
        forgetting_metrics(experience=True, stream=True),
    ]
    distiller = find_distiller(plugins)
    if distiller is not None:
        metrics.append(DistillationMetrics(distiller))
    kd = next((p for p in plugins if isinstance(p, KDReplayPlugin)), None)
    if kd is not None:
        metrics.append(DistillationLossMetric(kd))
    return EvaluationPlugin(*metrics, loggers=list(loggers))
