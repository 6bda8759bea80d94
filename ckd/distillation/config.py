"""The KD plugin's settings: the one place their defaults live (no Avalanche import)."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from typing import Sequence

from ckd.distillation.buffer import POLICIES
from ckd.distillation.losses import check_temperature
from ckd.distillation.teachers import DEFAULT_TEACHER, TEACHER_NAMES

__all__ = ["KDReplayConfig", "TEACHER_NAMES", "per_experience"]


@dataclass(frozen=True, kw_only=True)
class KDReplayConfig:
    """Settings of :class:`KDReplayPlugin`; the defaults are the best general values
    measured on validation splits of Seq-MNIST, Split-FMNIST and split-digits
    (docs/tuning.md, ``benchmarks/tuning/defaults_search.toml``).

    mem_size: replay memory slots. replay_batch_size: replayed samples added to
    each training minibatch. alpha: weight of the soft KL on replayed samples (or
    one value per experience: ``[i]`` while training experience ``i``).
    temperature: softmax temperature T (the loss carries T²). beta: weight of the
    hard-label cross-entropy on replayed samples. policy: ``reservoir`` (updated
    every minibatch) or ``class_balanced`` (refilled after each experience).
    teacher: the name of the teacher part when none is given (``ckd.distillation.teachers.TEACHERS``).
    seed: the buffer's random generator.
    """

    mem_size: int = 500
    replay_batch_size: int = 64
    alpha: float | tuple[float, ...] = 1.0
    temperature: float = 4.0
    beta: float = 1.0
    policy: str = "reservoir"
    teacher: str = DEFAULT_TEACHER
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("mem_size", "replay_batch_size"):
            value = getattr(self, name)
            if not _is_integer(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))  # numpy integers too
        if not _is_number(self.temperature):
            raise ValueError(f"temperature must be a number > 0, got {self.temperature!r}")
        check_temperature(self.temperature)
        if isinstance(self.alpha, Sequence) and not isinstance(self.alpha, str):
            if len(self.alpha) == 0:
                raise ValueError("alpha as a per-experience list must not be empty")
            if not all(_is_number(v) for v in self.alpha):
                raise ValueError(f"alpha must be a number >= 0 or one per experience, got {self.alpha!r}")
            object.__setattr__(self, "alpha", tuple(float(v) for v in self.alpha))
        for name in ("alpha", "beta"):
            for value in _as_tuple(getattr(self, name)):
                if not _is_number(value):
                    raise ValueError(f"{name} must be a number >= 0, got {value!r}")
                if not value >= 0:  # also rejects NaN
                    raise ValueError(f"{name} must be >= 0, got {value}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.teacher not in TEACHER_NAMES:
            raise ValueError(f"teacher must be one of {TEACHER_NAMES}, got {self.teacher!r}")

    def alpha_at(self, experience: int) -> float:
        """``alpha`` while training ``experience``."""
        return per_experience(self.alpha, experience, "alpha")


def per_experience(value: float | tuple[float, ...], experience: int, name: str) -> float:
    """A weight given as one value or one value per experience, at ``experience``."""
    if not isinstance(value, tuple):
        return value
    if experience >= len(value):
        raise ValueError(
            f"{name} has {len(value)} per-experience values but experience {experience} is being "
            f"trained; give one value per experience of the stream"
        )
    return value[experience]


def _is_integer(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _as_tuple(value: float | tuple[float, ...]) -> tuple[float, ...]:
    return value if isinstance(value, tuple) else (value,)
