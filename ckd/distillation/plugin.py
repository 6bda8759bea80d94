"""Avalanche plugins: replay with knowledge distillation from a teacher.

:class:`KDReplayPlugin` replays buffered samples in the same forward pass as the
stream minibatch and adds ``alpha · T² · KL(teacher ‖ student)`` and
``beta · CE`` on them. Where the soft targets come from is a teacher part
(:mod:`ckd.distillation.teachers`). :class:`LogitMatchingPlugin` adds an MSE on the same rows'
logits (DER's term) next to the KL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

import torch
from avalanche.models.dynamic_modules import MultiTaskModule
from avalanche.models.utils import avalanche_forward
from avalanche.training import DER, ER_ACE, ER_AML, MER, SCR, Cumulative, FeatureReplay, ICaRL
from avalanche.training.plugins import (
    BiCPlugin,
    CoPEPlugin,
    GDumbPlugin,
    GenerativeReplayPlugin,
    GSS_greedyPlugin,
    MIRPlugin,
    RARPlugin,
    ReplayPlugin,
)
from torch import Tensor, nn

import ckd.distillation.pickling  # noqa: F401  (Avalanche's save_checkpoint then pickles torch's optimizers)
from ckd.distillation.buffer import ReplayBuffer, ReplaySample
from ckd.distillation.config import TEACHER_NAMES, KDReplayConfig, _as_tuple
from ckd.distillation.frozen import FrozenModel
from ckd.distillation.losses import replay_cross_entropy, soft_kl, weighted
from ckd.distillation.plugin_base import (
    StrategyBoundPlugin,
    add_task_column,
    mark_seen_classes,
    steps_in_experience,
    teacher_precision,
)
from ckd.distillation.replay import DarkExperienceReplayPlugin, OnlineReplayPlugin
from ckd.distillation.teachers import CachedTeacher, EnsembleTeacher, TrainedTeacher, make_teacher

__all__ = ["REPLAYING_PLUGINS", "REPLAYING_STRATEGIES", "KDReplayPlugin", "ReplayStep"]

# Batch of the once-per-experience buffer refill: independent of the strategy's
# eval_mb_size, which Avalanche defaults to 1.
_PASS_BATCH = 1000

# Strategies and plugins that replay old samples of their own (through their loader, their
# dataset or their own forward): beside a KDReplayPlugin, the old samples they put in a
# minibatch would be stored again as current ones, with no soft target.
REPLAYING_STRATEGIES = (DER, ER_ACE, ER_AML, SCR, MER, FeatureReplay, ICaRL, Cumulative)
REPLAYING_PLUGINS = (ReplayPlugin, BiCPlugin, CoPEPlugin, GDumbPlugin, GSS_greedyPlugin, MIRPlugin, RARPlugin,
                     GenerativeReplayPlugin, OnlineReplayPlugin, DarkExperienceReplayPlugin)


@dataclass
class ReplayStep:
    """What the plugin replayed in the current training iteration.

    rows: the replayed rows of the step's forward batch (current samples come
    first); sample: what was drawn from the buffer; x: the replayed inputs as the
    forward pass saw them (after any augmentation plugin placed after this one);
    student_logits ``(R, C)``; teacher_logits ``(R, C_t)`` and teacher_mask (``None``
    without a teacher). All are set once every ``after_forward`` hook has run, so a
    part reading them in ``before_backward`` may sit anywhere in ``plugins=[...]``.
    """

    rows: slice
    sample: ReplaySample
    x: Tensor | None = None
    student_logits: Tensor | None = None
    teacher_logits: Tensor | None = None
    teacher_mask: Tensor | None = None


class KDReplayPlugin(StrategyBoundPlugin):
    """Replay with soft-target distillation from a teacher.

    Each training iteration, once the buffer holds samples, ``replay_batch_size``
    of them join the minibatch in the same forward pass, and the plugin adds
    ``alpha · soft_kl(student, teacher, T)`` plus ``beta · CE`` on those rows to
    ``strategy.loss``; the strategy's own criterion still sees only the current
    samples. ``teacher`` is a teacher part (:mod:`ckd.distillation.teachers`), its name, or a
    trained ``nn.Module`` (kept frozen, :class:`ckd.distillation.teachers.TrainedTeacher`); by
    default the model frozen at the end of the latest experience, with every output
    as a target (soft targets are cut to the teacher's width when the head grew, and
    to the sample's own head on multi-head models).

    Construction is keyword-only: ``KDReplayPlugin(mem_size=200, temperature=4)``,
    or ``KDReplayPlugin(config=KDReplayConfig(...), teacher=EMATeacher())``; ``config``
    may also be a dict of the settings.
    ``replay`` holds the :class:`ReplayStep` of the current iteration (``None``
    when nothing was replayed), for other plugins to read; ``kd_loss`` the distillation
    term the iteration added to ``strategy.loss`` (``alpha · soft_kl``, detached, shape
    ``()``; ``None`` when it added none), read by :class:`ckd.distillation.parts.distillation_metrics.DistillationLossMetric`.

    A non-finite distillation loss raises ``FloatingPointError`` at the end of
    the epoch in which it happened (checked once per epoch to keep the training
    step free of host-device syncs). One plugin serves one strategy
    (:class:`StrategyBoundPlugin`); ``state_dict()`` is what it keeps between experiences.
    """

    keeps = "its buffer and teacher"

    def __init__(self, *, config: KDReplayConfig | None = None, teacher=None, **settings) -> None:
        super().__init__()
        if config is not None and settings:
            raise ValueError("give either config= or settings, not both")
        if isinstance(config, Mapping):
            config, settings = None, dict(config)
        if config is not None and not isinstance(config, KDReplayConfig):
            raise ValueError(f"config must be a KDReplayConfig or a dict of its settings, got {type(config).__name__}")
        unknown = set(settings) - {f.name for f in fields(KDReplayConfig)}
        if unknown:
            allowed = ", ".join(f.name for f in fields(KDReplayConfig))
            raise TypeError(f"KDReplayPlugin has no setting {sorted(unknown)[0]!r} (settings: {allowed})")
        if isinstance(teacher, str):
            settings["teacher"] = teacher
            config = replace(config, teacher=teacher) if config is not None else None
            teacher = None
        elif isinstance(teacher, nn.Module):
            teacher = TrainedTeacher(teacher)
        elif teacher is not None and not callable(getattr(teacher, "soft_targets", None)):
            raise ValueError(
                f"teacher must be a teacher name {TEACHER_NAMES}, a teacher part (ckd.distillation.teachers) or a trained "
                f"torch.nn.Module, got {type(teacher).__name__}"
            )
        self.config = config if config is not None else KDReplayConfig(**settings)
        self.teacher_part = teacher if teacher is not None else make_teacher(self.config.teacher)
        if isinstance(self.teacher_part, EnsembleTeacher):
            self.teacher_part.temperature = self.config.temperature
        self._uses_replay = max(_as_tuple(self.config.alpha)) > 0 or self.config.beta > 0
        self.buffer: ReplayBuffer | None = None
        self._alpha = 0.0
        # bool (n_tasks, C): classes trained on so far, per task label.
        self.seen_classes = torch.zeros(0, 0, dtype=torch.bool)
        self.replay: ReplayStep | None = None
        self.kd_loss: Tensor | None = None
        self.current_logits: Tensor | None = None
        self._current: tuple[Tensor, Tensor, Tensor] | None = None
        self._joined: tuple[Tensor, ...] | None = None  # the minibatch before_forward built
        self._kd_total: Tensor | None = None  # sum of the epoch's KD terms: NaN/inf once any is

    @property
    def teacher(self) -> FrozenModel | None:
        """The model giving soft targets now (``None`` before an experience ended, or
        for teachers that keep logits instead of a model)."""
        return self.teacher_part.model

    @property
    def temperature(self) -> float:
        """The distillation temperature (``config.temperature``)."""
        return self.config.temperature

    # ------------------------------------------------------------- experience
    def before_training(self, strategy, **kwargs) -> None:
        _refuse_other_replay(strategy, self)
        super().before_training(strategy, **kwargs)

    def before_training_exp(self, strategy, **kwargs) -> None:
        device = torch.device(strategy.device)
        self._alpha = self.config.alpha_at(strategy.experience.current_experience)
        if self.buffer is None:
            self.buffer = ReplayBuffer(self.config.mem_size, self.config.policy, device, self.config.seed)
        self.buffer.to(device)
        self.teacher_part.bind(avalanche_forward, isinstance(strategy.model, MultiTaskModule))
        self.teacher_part.to(device)
        self.teacher_part.before_training_exp(strategy.model, steps_in_experience(strategy))
        self._kd_total = torch.zeros((), device=device)

    def after_training_exp(self, strategy, **kwargs) -> None:
        self.seen_classes = mark_seen_classes(self.seen_classes, strategy.experience)
        if self.config.policy == "class_balanced" and self._uses_replay:
            self._refill_class_balanced(strategy, strategy.experience.current_experience)
        self.teacher_part.after_training_exp(strategy.model, self.seen_classes, self.buffer)

    def after_training_epoch(self, strategy, **kwargs) -> None:
        if self._kd_total is not None and not bool(torch.isfinite(self._kd_total)):
            raise FloatingPointError(
                f"the distillation loss became NaN or infinite in experience "
                f"{strategy.experience.current_experience} (config {asdict(self.config)}); "
                "lower the learning rate or alpha"
            )

    # ------------------------------------------------------------- iteration
    def before_forward(self, strategy, **kwargs) -> None:
        self.replay, self.kd_loss = None, None
        add_task_column(strategy)
        x, y, t = strategy.mbatch[0], strategy.mbatch[1], strategy.mbatch[2]
        self._current = (x, y, t)
        if self.buffer is None or self.buffer.is_empty or not self._replay_has_a_loss():
            return
        sample = self.buffer.sample(self.config.replay_batch_size)
        n = x.shape[0]
        strategy.mbatch[0] = torch.cat([x, sample.x])
        strategy.mbatch[1] = torch.cat([y, sample.y.to(y.dtype)])
        strategy.mbatch[2] = torch.cat([t, sample.task.to(t.dtype)])
        self._joined = tuple(strategy.mbatch[:3])
        self.replay = ReplayStep(rows=slice(n, n + sample.x.shape[0]), sample=sample)

    def after_forward(self, strategy, **kwargs) -> None:
        if self.replay is not None:
            rows = self.replay.rows
            self.replay.student_logits = strategy.mb_output[rows]
            strategy.mb_output = strategy.mb_output[: rows.start]
            if all(a is b for a, b in zip(strategy.mbatch, self._joined)):  # no plugin replaced the rows
                self.replay.x = self.replay.sample.x
                strategy.mbatch[:3] = self._current
            else:  # a plugin replaced them (augmented them): the rows as the forward saw them
                self.replay.x = strategy.mbatch[0][rows]
                for i in range(3):
                    strategy.mbatch[i] = strategy.mbatch[i][: rows.start]
            if self._alpha > 0 and self.teacher_part.ready:
                step = self.replay
                with teacher_precision(strategy):
                    logits, step.teacher_mask = self.teacher_part.soft_targets(step.sample, step.x)
                step.teacher_logits = logits.float()
        self._joined = None
        self.current_logits = strategy.mb_output

    def before_backward(self, strategy, **kwargs) -> None:
        step = self.replay
        if step is None:
            return
        if step.teacher_logits is not None:
            kd = soft_kl(step.student_logits, step.teacher_logits, self.config.temperature, step.teacher_mask)
            self._kd_total += kd.detach()
            term = weighted(self._alpha, kd)
            strategy.loss += term
            self.kd_loss = term.detach()
        if self.config.beta > 0:
            strategy.loss += weighted(self.config.beta, replay_cross_entropy(step.student_logits, step.sample.y))

    def after_training_iteration(self, strategy, **kwargs) -> None:
        self.teacher_part.after_training_iteration(strategy.model)
        if self.config.policy == "reservoir" and self._uses_replay and self._current is not None:
            x, y, t = self._current
            self.buffer.reservoir_add(x, y, t, strategy.experience.current_experience)
            if isinstance(self.teacher_part, CachedTeacher):
                self.teacher_part.invalidate()
        self._current = None

    def memory_bytes(self) -> dict[str, int]:
        """What the plugin keeps between experiences: ``buffer`` (samples, labels,
        cached logits) and ``teachers`` (the stored models), in bytes."""
        return {
            "buffer": 0 if self.buffer is None else self.buffer.nbytes,
            "teachers": self.teacher_part.nbytes,
        }

    def state_dict(self) -> dict:
        """What the plugin keeps between experiences: the buffer (tensors and generator),
        the teacher part's state and the classes seen."""
        return {
            "buffer": None if self.buffer is None else self.buffer.state_dict(),
            "teacher": self.teacher_part.state_dict(),
            "seen_classes": self.seen_classes,
        }

    def load_state_dict(self, state: dict) -> None:
        buffer = state["buffer"]
        self.buffer = None
        if buffer is not None:
            self.buffer = ReplayBuffer(self.config.mem_size, self.config.policy, buffer["device"], self.config.seed)
            self.buffer.load_state_dict(buffer)
        self.teacher_part.load_state_dict(state["teacher"])
        self.seen_classes = state["seen_classes"]

    # --------------------------------------------------------------- helpers
    def _replay_has_a_loss(self) -> bool:
        return self.config.beta > 0 or (self._alpha > 0 and self.teacher_part.ready)

    def _refill_class_balanced(self, strategy, exp_id: int) -> None:
        dataset = strategy.experience.dataset.eval()
        targets = torch.as_tensor(list(dataset.targets), dtype=torch.long)
        self.buffer.class_balanced_refill(
            targets, exp_id, lambda index: _load(dataset.subset(index.cpu().tolist()), _PASS_BATCH)
        )


def _refuse_other_replay(strategy, kd: KDReplayPlugin) -> None:
    """Refuse a strategy that replays besides ``kd``: it, or another of its plugins, keeps a memory of its own."""
    if isinstance(strategy, REPLAYING_STRATEGIES):
        name = type(strategy).__name__
        raise ValueError(f"KDReplayPlugin keeps its own replay buffer and the strategy {name} replays too (its old "
                         "samples would be stored again as current ones): use a strategy without replay, such as Naive")
    other = next((p for p in strategy.plugins if p is not kd and isinstance(p, (*REPLAYING_PLUGINS, KDReplayPlugin))),
                 None)
    if other is not None:
        name = "other KDReplayPlugin" if isinstance(other, KDReplayPlugin) else type(other).__name__
        raise ValueError(f"KDReplayPlugin keeps its own replay buffer and the strategy's {name} replays too (its old "
                         f"samples would be stored again as current ones): remove the {name} from plugins=[...]")


def _load(dataset, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """All ``(x, y, task)`` of a (small) Avalanche dataset as tensors."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=max(batch_size, 1), shuffle=False)
    xs, ys, ts = [], [], []
    for batch in loader:
        xs.append(batch[0])
        ys.append(batch[1])
        ts.append(batch[2] if len(batch) > 2 else torch.zeros_like(batch[1]))  # (x, y) samples: task 0
    return torch.cat(xs), torch.cat(ys), torch.cat(ts)
