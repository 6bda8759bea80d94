"""An exponential moving average of a model's weights: the EMA teacher's and the EMA evaluation's."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ckd.distillation.frozen import model_nbytes

__all__ = ["EMA_HALF_LIFE", "EMAWeights", "decay_for_half_life"]

# The EMA's half-life, a fraction of an experience's training iterations: the best general
# value measured on validation splits (docs/tuning.md), for the EMA teacher and EMA evaluation alike.
EMA_HALF_LIFE = 0.3


def decay_for_half_life(half_life: float, steps: int) -> float:
    """The per-step EMA decay ``λ`` whose half-life is ``half_life · steps`` steps:
    ``λ = 0.5 ** (1 / (half_life · steps))``."""
    if not half_life > 0:
        raise ValueError(f"half_life must be > 0, got {half_life}")
    return 0.5 ** (1.0 / max(half_life * max(steps, 1), 1e-12))


class EMAWeights:
    """An exponential moving average of a model's weights: ``θ_e ← λ·θ_e + (1−λ)·θ``
    after every update, on the device, without host syncs.

    ``half_life`` is a fraction of an experience's training iterations (so it
    transfers across streams and batch sizes); ``λ`` is set per experience from its
    number of steps (:func:`decay_for_half_life`). ``update_probability < 1`` applies
    each update with that probability, as CLS-ER does (drawn on the device).
    Floating-point buffers (BatchNorm statistics) are averaged too; others are copied.
    """

    def __init__(self, *, half_life: float = EMA_HALF_LIFE, update_probability: float = 1.0, seed: int = 0) -> None:
        if not half_life > 0:
            raise ValueError(f"half_life must be > 0 (a fraction of an experience's steps), got {half_life}")
        if not 0 < update_probability <= 1:
            raise ValueError(f"update_probability must be in (0, 1], got {update_probability}")
        self.half_life = half_life
        self.update_probability = update_probability
        self.seed = seed
        self.decay = 0.0
        self.model: nn.Module | None = None
        self._pairs: tuple[list[Tensor], list[Tensor]] = ([], [])
        self._copies: tuple[list[Tensor], list[Tensor]] = ([], [])
        self._generator: torch.Generator | None = None

    def start_experience(self, model: nn.Module, steps: int) -> None:
        """Set ``λ`` for an experience of ``steps`` iterations and :meth:`pair` the average with ``model``."""
        self.decay = decay_for_half_life(self.half_life, steps)
        self.pair(model)

    def pair(self, model: nn.Module) -> None:
        """Pair the average with ``model``'s tensors: a copy of it at first; a new copy when the
        two differ in tensors or shapes (``model`` grew, or the average did while it was
        evaluated), keeping the average where they overlap (a grown head's old rows)."""
        live = model.state_dict()
        if self.model is None:
            self.model = copy.deepcopy(model).eval().requires_grad_(False)
        else:
            mine = self.model.state_dict()
            if mine.keys() != live.keys() or any(mine[k].shape != live[k].shape for k in live):
                grown = copy.deepcopy(model).eval().requires_grad_(False)
                for key, value in grown.state_dict().items():
                    old = mine.get(key)
                    if old is not None and old.dim() == value.dim():
                        overlap = tuple(slice(0, min(a, b)) for a, b in zip(old.shape, value.shape))
                        value[overlap] = old[overlap].to(value.device)
                self.model = grown
        device = next(iter(live.values())).device if live else torch.device("cpu")
        self.model.to(device)
        mine = self.model.state_dict()
        averaged = [k for k, v in live.items() if v.is_floating_point()]
        copied = [k for k, v in live.items() if not v.is_floating_point()]
        self._pairs = ([mine[k] for k in averaged], [live[k] for k in averaged])
        self._copies = ([mine[k] for k in copied], [live[k] for k in copied])
        if self.update_probability < 1 and (self._generator is None or self._generator.device != device):
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average towards the paired model's current weights."""
        ema, live = self._pairs
        if not ema:
            return
        weight = 1.0 - self.decay
        if self.update_probability < 1:
            draw = torch.rand((), generator=self._generator, device=ema[0].device)
            weight = (draw < self.update_probability).to(ema[0].dtype) * weight
            for e, p in zip(ema, live):
                e.lerp_(p, weight.to(e.dtype))
        else:
            torch._foreach_lerp_(ema, live, weight)
        if self._copies[0]:
            torch._foreach_copy_(*self._copies)

    @property
    def nbytes(self) -> int:
        return 0 if self.model is None else model_nbytes(self.model)

    def state_dict(self) -> dict:
        """The averaged module itself (``None`` before training), ``λ`` and the update generator;
        the pairing with the live model is made again when the next experience starts."""
        generator = self._generator
        return {
            "model": self.model, "decay": self.decay,
            "generator": None if generator is None else (str(generator.device), generator.get_state()),
        }

    def load_state_dict(self, state: dict) -> None:
        """Put ``state`` back; into the average's own tensors when it has the same ones, so that a
        pairing made this experience still holds (a run resumed between two epochs)."""
        model, self.decay = state["model"], state["decay"]
        if self.model is not None and model is not None and _same_tensors(self.model, model):
            self.model.load_state_dict(model.state_dict())
        else:
            self.model = model
            self._pairs, self._copies = ([], []), ([], [])
        self._generator = None
        if state["generator"] is not None:
            device, rng_state = state["generator"]
            self._generator = torch.Generator(device=device)
            self._generator.set_state(rng_state)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_pairs=([], []), _copies=([], []), _generator=self.state_dict()["generator"])  # torch < 2.3: no pickling of generators
        return state

    def __setstate__(self, state: dict) -> None:
        generator = state.pop("_generator")
        self.__dict__.update(state)
        self.load_state_dict({"model": self.model, "decay": self.decay, "generator": generator})


def _same_tensors(a: nn.Module, b: nn.Module) -> bool:
    mine, theirs = a.state_dict(), b.state_dict()
    return mine.keys() == theirs.keys() and all(
        mine[k].shape == theirs[k].shape and mine[k].dtype == theirs[k].dtype for k in mine
    )
