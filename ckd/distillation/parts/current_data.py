"""Plugins on the current stream samples that compose with :class:`ckd.distillation.plugin.KDReplayPlugin`."""

from __future__ import annotations

from typing import Sequence

import torch
from avalanche.core import SupervisedPlugin
from avalanche.models.dynamic_modules import MultiTaskModule
from avalanche.models.utils import avalanche_forward
from torch import Tensor

from ckd.distillation.config import _is_number, per_experience
from ckd.distillation.frozen import FrozenModel
from ckd.distillation.losses import check_temperature, soft_kl
from ckd.distillation.plugin import KDReplayPlugin
from ckd.distillation.plugin_base import add_task_column, mark_seen_classes, require_among_plugins, teacher_precision
from ckd.distillation.teachers import SnapshotTeacher

__all__ = ["AsymmetricCrossEntropyPlugin", "CurrentDistillationPlugin"]


class CurrentDistillationPlugin(SupervisedPlugin):
    """Distillation on the *current* samples (LwF, Li & Hoiem 2016, with the T² factor):
    ``alpha · soft_kl(z_s, z_t, T)`` against the model frozen after the previous
    experience, on the classes it was trained on.

    kd: share the teacher of a :class:`KDReplayPlugin` in the same strategy (before or
    after this plugin); without one the plugin keeps its own snapshot. alpha may be
    one value per experience. ``known_classes_only=False`` distils every output, the
    current experience's classes too: with an EMA teacher (``kd``'s ``teacher="ema"``)
    that is momentum knowledge distillation on the incoming rows (Michel et al., 2024).
    ``teacher`` and ``temperature`` make it a :class:`ckd.distillation.diagnostics.Distiller`.
    """

    def __init__(
        self, *, alpha: float | Sequence[float] = 1.0, temperature: float = 2.0, kd: KDReplayPlugin | None = None,
        known_classes_only: bool = True,
    ) -> None:
        super().__init__()
        if not _is_number(temperature):
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        check_temperature(temperature)
        if isinstance(alpha, Sequence) and not isinstance(alpha, str):
            if not alpha:
                raise ValueError("alpha as a per-experience list must not be empty")
            if not all(_is_number(a) for a in alpha):
                raise ValueError(f"alpha must be a number >= 0 or one per experience, got {alpha!r}")
            alpha = tuple(float(a) for a in alpha)
        for value in alpha if isinstance(alpha, tuple) else (alpha,):
            if not _is_number(value):
                raise ValueError(f"alpha must be a number >= 0, got {value!r}")
            if not value >= 0:
                raise ValueError(f"alpha must be >= 0, got {value}")
        if not isinstance(known_classes_only, bool):
            raise ValueError(f"known_classes_only must be true or false, got {known_classes_only!r}")
        self.alpha = alpha
        self.temperature = temperature
        self.kd = kd
        self.known_classes_only = known_classes_only
        self.own = SnapshotTeacher() if kd is None else None
        self.seen_classes = torch.zeros(0, 0, dtype=torch.bool)
        self._alpha = 0.0

    @property
    def teacher(self) -> FrozenModel | None:
        """The model the current samples are distilled from (``kd``'s, else the plugin's own
        snapshot; ``None`` until an experience has ended)."""
        return self.kd.teacher if self.kd is not None else self.own.model

    def before_training(self, strategy, **kwargs) -> None:
        if self.kd is not None:
            require_among_plugins(strategy, self.kd, self)

    def before_training_exp(self, strategy, **kwargs) -> None:
        self._alpha = per_experience(self.alpha, strategy.experience.current_experience, "alpha")
        if self.own is not None:
            self.own.bind(avalanche_forward, isinstance(strategy.model, MultiTaskModule))
            self.own.to(strategy.device)

    def after_training_exp(self, strategy, **kwargs) -> None:
        if self.own is not None:
            self.seen_classes = mark_seen_classes(self.seen_classes, strategy.experience)
            self.own.after_training_exp(strategy.model, self.seen_classes, None)

    def before_forward(self, strategy, **kwargs) -> None:
        add_task_column(strategy)

    def state_dict(self) -> dict:
        """What the plugin keeps between experiences: its own snapshot (none when it shares
        ``kd``'s teacher) and the classes seen."""
        return {"own": None if self.own is None else self.own.state_dict(), "seen_classes": self.seen_classes}

    def load_state_dict(self, state: dict) -> None:
        if self.own is not None:
            self.own.load_state_dict(state["own"])
        self.seen_classes = state["seen_classes"]

    def before_backward(self, strategy, **kwargs) -> None:
        teacher = self.teacher
        if self._alpha == 0 or teacher is None:
            return
        logits = self.kd.current_logits if self.kd is not None else strategy.mb_output
        x, t = strategy.mb_x, strategy.mb_task_id
        with teacher_precision(strategy):
            teacher_logits = teacher.logits(x, t)[0].float()
        mask = teacher.known_class_mask(t, teacher_logits.shape[1]) if self.known_classes_only else None
        strategy.loss += self._alpha * soft_kl(logits, teacher_logits, self.temperature, mask)


class AsymmetricCrossEntropyPlugin(SupervisedPlugin):
    """The strategy's loss on the current samples sees only the logits of the current
    experience's classes, so learning new classes does not push old ones down
    (ER-ACE, Caccia et al., 2022); from the second experience on. Replayed rows keep
    the whole head: place it after a :class:`KDReplayPlugin`, which splits them off."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: Tensor | None = None
        self._masks: dict[int, Tensor] = {}
        self._active = False

    def state_dict(self) -> dict:  # set anew each experience
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def before_training(self, strategy, **kwargs) -> None:
        plugins = list(strategy.plugins)
        kd = [i for i, p in enumerate(plugins) if isinstance(p, KDReplayPlugin)]
        if kd and plugins.index(self) < kd[0]:
            raise ValueError("place AsymmetricCrossEntropyPlugin after the KDReplayPlugin in plugins=[...]: before it, "
                             "it would mask the replayed rows' logits too")

    def before_training_exp(self, strategy, **kwargs) -> None:
        self._active = strategy.experience.current_experience > 0
        self._classes = torch.as_tensor(list(strategy.experience.classes_in_this_experience), dtype=torch.long)
        self._masks = {}

    def after_forward(self, strategy, **kwargs) -> None:
        if not self._active:
            return
        out = strategy.mb_output
        drop = self._masks.get(out.shape[1])
        if drop is None:  # once per experience and head width
            width = out.shape[1]
            keep = torch.zeros(width + 1, dtype=torch.bool)  # the last slot takes classes beyond the head
            keep[self._classes.clamp_max(width)] = True
            drop = self._masks.setdefault(width, (~keep[:width]).to(out.device))
        strategy.mb_output = out.masked_fill(drop, torch.finfo(out.dtype).min / 4)
