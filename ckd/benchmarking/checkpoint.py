"""Checkpoints: what a strategy holds between experiences, written to one file and loaded
into a freshly built strategy; and Avalanche's own ``save_checkpoint`` for strategies
with ckd's plugins.

Every ckd plugin has ``state_dict()`` and ``load_state_dict(state)``: what it keeps
between experiences (buffer tensors and their generator, teachers, averaged weights,
classes seen); a plugin with nothing to keep returns ``{}``. :func:`training_state` gathers
them with the model's and the optimizer's state (SGD's momentum) and, for Avalanche's
replay (``ckd.distillation.replay.ExperienceReplayPlugin``, ``DER``), its storage policy, whose
datasets are written as references to the stream's data (:func:`write_checkpoint`), not
copies. A strategy with a plugin that has no ``state_dict`` (Avalanche's ``LwFPlugin``,
``EWCPlugin``) cannot be checkpointed (:func:`checkpoint_refusal`).

Avalanche's ``save_checkpoint`` pickles the whole strategy with dill; the rule in
:mod:`ckd.distillation.pickling` (imported by every ckd plugin, and here) lets dill pickle
torch's optimizers, whose classes it otherwise copies by value and fails on.
"""

from __future__ import annotations

import contextvars
import math
import os
import pickle
import random
import time
import types
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.benchmarks.utils.flat_data import FlatData
from avalanche.core import SupervisedPlugin
from avalanche.models.utils import avalanche_model_adaptation
from avalanche.training import DER
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.plugins.clock import Clock
from avalanche.training.templates.base_sgd import PeriodicEval

import ckd.distillation.pickling  # noqa: F401  (registers the rule that pickles torch's optimizers)
from ckd.common.files import write_file_atomic

__all__ = [
    "EPOCH_CHECKPOINT_MINUTES",
    "EpochCheckpoints",
    "checkpoint_interval_s",
    "RunCheckpoint",
    "checkpoint_refusal",
    "epoch_checkpoint_path",
    "epoch_checkpoint_refusal",
    "epoch_state",
    "global_rng_state",
    "load_epoch_state",
    "load_training_state",
    "read_checkpoint",
    "set_global_rng_state",
    "training_state",
    "write_checkpoint",
]


# ----------------------------------------------------------------- training state
def _stateless_plugins() -> tuple[type, ...]:
    """Avalanche's plugins that every strategy carries and that keep nothing a run needs
    between experiences (the clock is saved on its own)."""
    return EvaluationPlugin, PeriodicEval


def checkpoint_refusal(strategy) -> str | None:
    """Why ``strategy`` cannot be checkpointed (a plugin without ``state_dict``), or ``None``."""
    for plugin in strategy.plugins:
        if not isinstance(plugin, (Clock, *_stateless_plugins())) and not callable(getattr(plugin, "state_dict", None)):
            return f"{type(plugin).__name__} has no state_dict()"
    return None


def training_state(strategy) -> dict[str, Any]:
    """What ``strategy`` carries from one experience to the next: the model's and optimizer's
    state, each plugin's ``state_dict()`` (in the order of ``strategy.plugins``), the training
    clock and, for Avalanche's ``DER``, its storage policy. Call it between experiences."""
    reason = checkpoint_refusal(strategy)
    if reason is not None:
        raise ValueError(f"this strategy cannot be checkpointed: {reason}")
    plugins = []
    for plugin in strategy.plugins:
        if isinstance(plugin, Clock):
            state = {k: v for k, v in vars(plugin).items() if isinstance(v, int) and not isinstance(v, bool)}
        elif isinstance(plugin, _stateless_plugins()):
            state = None
        else:
            state = plugin.state_dict()
        plugins.append((type(plugin).__qualname__, state))
    return {
        "model": strategy.model.state_dict(),
        "optimizer": strategy.optimizer.state_dict(),
        "plugins": plugins,
        "storage_policy": _strategy_storage(strategy),
    }


def load_training_state(strategy, state: dict[str, Any], finished: Sequence) -> None:
    """Put ``training_state`` into a strategy built as the saved one was, after the
    experiences ``finished``: the model is adapted to them first (a growing head grows), and
    the optimizer keeps the loaded momentum at the next experience."""
    _check_plugins(strategy, state)
    strategy.model.to(strategy.device)  # before the optimizer's state is loaded onto its parameters
    strategy.make_optimizer(reset_optimizer_state=True)  # what the first experience does
    for experience in finished:
        avalanche_model_adaptation(strategy.model, experience)
        strategy.make_optimizer()
    _load_state(strategy, state)


def _check_plugins(strategy, state: dict[str, Any]) -> None:
    names = [type(p).__qualname__ for p in strategy.plugins]
    saved = [name for name, _ in state["plugins"]]
    if names != saved:
        raise ValueError(f"the checkpoint's plugins {saved} are not this strategy's {names}")


def _load_state(strategy, state: dict[str, Any]) -> None:
    strategy.model.load_state_dict(state["model"])  # in place: what holds the model's tensors keeps them
    strategy.optimizer.load_state_dict(state["optimizer"])
    for plugin, (_, plugin_state) in zip(strategy.plugins, state["plugins"]):
        if isinstance(plugin, Clock):
            for key, value in plugin_state.items():
                setattr(plugin, key, value)
        elif plugin_state is not None:
            plugin.load_state_dict(plugin_state)
    if state["storage_policy"] is not None:
        strategy.storage_policy = state["storage_policy"]


# ------------------------------------------------------------ inside an experience
# Save every 10 minutes (at the start of the first epoch after that) unless told otherwise.
EPOCH_CHECKPOINT_MINUTES = 10.0


def checkpoint_interval_s() -> float:
    """Seconds between two saves inside an experience: ``$CKD_CHECKPOINT_MINUTES``, else 10 minutes."""
    text = os.environ.get("CKD_CHECKPOINT_MINUTES")
    if text is None:
        return 60 * EPOCH_CHECKPOINT_MINUTES
    try:
        minutes = float(text)
    except ValueError:
        minutes = math.nan
    if not minutes >= 0 or minutes == math.inf:
        raise ValueError(f"CKD_CHECKPOINT_MINUTES must be a number of minutes >= 0, got {text!r}")
    return 60 * minutes


def epoch_checkpoint_path(checkpoint: str | os.PathLike) -> Path:
    """The file of the checkpoints inside an experience, beside the run's ``checkpoint``."""
    return Path(checkpoint).with_suffix(".epoch.ckpt")


def epoch_checkpoint_refusal(strategy) -> str | None:
    """Why ``strategy`` cannot be checkpointed between the epochs of an experience, or ``None``:
    Avalanche's ``DER`` draws its replay from one endless loader per experience, whose place
    in the memory no state holds (its runs resume between experiences)."""
    if isinstance(strategy, DER):
        return "Avalanche's DER keeps its replay loader's place across epochs"
    return checkpoint_refusal(strategy)


class EpochCheckpoints(SupervisedPlugin):
    """Checkpoints inside an experience of several epochs, for long experiences.

    At the start of an epoch (the first one excepted), once ``every_s`` seconds have passed
    since the last save (:meth:`saved` restarts the count), calls ``save(strategy, epochs)``
    with the epochs done. It must be the strategy's first plugin, so that what it saves is
    the state every other plugin's ``before_training_epoch`` starts from.

    It saves nothing until :meth:`start` gives it ``save`` and ``every_s`` (the runner
    does once the checkpoint files are known). :meth:`resume_at` makes the experience about
    to be trained (started from the state saved before it) resume from a state saved after
    ``epochs`` of its epochs: those epochs run with no minibatch, then that state
    (:func:`load_epoch_state`) and the loader are put back.
    """

    def __init__(self) -> None:
        super().__init__()
        self._save: Callable[[Any, int], None] | None = None
        self.every_s = math.inf
        self._last_save = time.monotonic()
        self._resume: tuple[int, dict[str, Any]] | None = None
        self._loader = None

    def start(self, save: Callable[[Any, int], None], every_s: float) -> None:
        """From now on, call ``save(strategy, epochs)`` once ``every_s`` seconds have passed."""
        if isinstance(every_s, bool) or not isinstance(every_s, (int, float)) or not every_s >= 0:
            raise ValueError(f"the checkpoint interval must be a number of seconds >= 0, got {every_s!r}")
        self._save, self.every_s = save, float(every_s)
        self.saved()

    def saved(self) -> None:
        """A checkpoint was written: count ``every_s`` from now."""
        self._last_save = time.monotonic()

    def resume_at(self, epochs: int, state: dict[str, Any]) -> None:
        self._resume = (epochs, state)

    def before_training_epoch(self, strategy, **kwargs) -> None:
        epoch = strategy.clock.train_exp_epochs
        if self._resume is not None:
            epochs, state = self._resume
            if self._loader is None:
                self._loader = strategy.dataloader
            if epoch < epochs:
                strategy.dataloader = ()  # an epoch already trained
                return
            strategy.dataloader, self._loader, self._resume = self._loader, None, None
            load_epoch_state(strategy, state)
            self.saved()
        elif self._save is not None and epoch > 0 and time.monotonic() - self._last_save >= self.every_s:
            self._save(strategy, epoch)
            self.saved()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def epoch_state(strategy) -> dict[str, Any]:
    """What :func:`load_epoch_state` puts back: :func:`training_state`, the global generators
    and the data loader's own generator (ckd's tensor minibatches draw each epoch's order from it)."""
    generator = getattr(strategy.dataloader, "generator", None)
    return {
        "training": training_state(strategy), "rng": global_rng_state(),
        "loader": generator.get_state() if isinstance(generator, torch.Generator) else None,
    }


def load_epoch_state(strategy, state: dict[str, Any]) -> None:
    """Put :func:`epoch_state` back into the strategy that saved it, at the same epoch of the
    same experience (the model and optimizer in place, as every plugin's own state)."""
    _check_plugins(strategy, state["training"])
    _load_state(strategy, state["training"])
    set_global_rng_state(state["rng"])
    if state["loader"] is not None:
        strategy.dataloader.generator.set_state(state["loader"])


def _strategy_storage(strategy):
    return strategy.storage_policy if isinstance(strategy, DER) else None


def global_rng_state() -> dict[str, Any]:
    """The states of torch's (CPU and, once initialised, CUDA), NumPy's and Python's global generators."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_global_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


# ------------------------------------------------------------------------- files
# The stream's data while a checkpoint is read: what its references resolve to.
_STREAM_DATA: contextvars.ContextVar[list | None] = contextvars.ContextVar("ckd_stream_data", default=None)


def _stream_objects(train_stream) -> list:
    """Every object that makes up the training datasets of ``train_stream`` (datasets, their
    flat data and data attributes, down to the sources), in a fixed order: a stream built
    again from the same settings lists its own in the same order."""
    found: dict[int, Any] = {}

    def visit(node) -> None:
        if id(node) in found or isinstance(node, (list, tuple, dict, str, int, float)):
            return
        found[id(node)] = node
        for child in getattr(node, "_datasets", ()) if isinstance(node, FlatData) else ():
            visit(child)
        for attribute in getattr(node, "_data_attributes", {}).values():
            visit(attribute)
            visit(attribute.data)
        flat = getattr(node, "_flat_data", None)
        if flat is not None and flat is not node:
            visit(flat)

    for experience in train_stream:
        visit(experience.dataset)
    return list(found.values())


def _stream_object(key: int):
    data = _STREAM_DATA.get()
    if data is None:
        raise RuntimeError("this checkpoint refers to a stream's data: read it with ckd.benchmarking.checkpoint.read_checkpoint")
    return data[key]


def _pickle_module(objects: list) -> types.ModuleType:
    """A pickle module for ``torch.save`` that writes ``objects`` as references."""
    ids = {id(obj): key for key, obj in enumerate(objects)}

    class Pickler(pickle.Pickler):
        def reducer_override(self, obj):
            key = ids.get(id(obj))
            return NotImplemented if key is None else (_stream_object, (key,))

    module = types.ModuleType("ckd_checkpoint_pickle")
    module.Pickler, module.Unpickler, module.load, module.dump = Pickler, pickle.Unpickler, pickle.load, pickle.dump
    return module


def write_checkpoint(path: str | os.PathLike, state: Any, train_stream) -> Path:
    """``torch.save`` of ``state`` to ``path``, atomically (:func:`ckd.common.files.write_file_atomic`);
    the datasets of ``train_stream`` that ``state`` holds (an Avalanche replay memory's) are
    written as references to them."""
    objects = _stream_objects(train_stream)
    return write_file_atomic(path, lambda f: torch.save(state, f, pickle_module=_pickle_module(objects)))


def read_checkpoint(path: str | os.PathLike, train_stream) -> Any:
    """What :func:`write_checkpoint` wrote, its references resolved in ``train_stream``
    (a stream built as the saved one was). A checkpoint is code, as any pickle: read only your own."""
    token = _STREAM_DATA.set(_stream_objects(train_stream))
    try:
        return torch.load(path, weights_only=False)
    finally:
        _STREAM_DATA.reset(token)


class RunCheckpoint:
    """The checkpoint file of one run: written between experiences, read when the same run
    starts again. ``key`` (the run's settings and library versions) must match: a checkpoint
    written with another key, or one that cannot be read, is ignored (and replaced by the
    next write)."""

    def __init__(self, path: str | os.PathLike, key: dict[str, Any], train_stream) -> None:
        self.path = Path(path)
        self.key = key
        self.train_stream = train_stream

    def load(self) -> dict[str, Any] | None:
        """The saved state, or ``None`` (no checkpoint, another run's, or unreadable)."""
        if not self.path.is_file():
            return None
        try:
            saved = read_checkpoint(self.path, self.train_stream)
        except Exception as error:  # noqa: BLE001 (any unreadable file is started over)
            warnings.warn(f"{self.path} cannot be read ({type(error).__name__}: {error}); the run starts over",
                          stacklevel=2)
            return None
        if not isinstance(saved, dict) or saved.get("key") != self.key:
            return None
        return saved["state"]

    def save(self, state: dict[str, Any]) -> None:
        write_checkpoint(self.path, {"key": self.key, "state": state}, self.train_stream)
