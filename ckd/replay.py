"""The replay baselines, each a plugin on a plain strategy (``Naive``).

* :class:`ExperienceReplayPlugin` (``replay``): Avalanche's experience replay.
* :class:`OnlineReplayPlugin` (``er``): experience replay with a reservoir offered every
  minibatch, as the online papers run it.
* :class:`ERACEPlugin` (``er-ace``): experience replay with ER-ACE's asymmetric
  cross-entropy (Caccia et al., ICLR 2022).
* :class:`DarkExperienceReplayPlugin` (``der-authors``): DER and DER++ (Buzzega et
  al., NeurIPS 2020) with the timing of the authors' code.

The last three keep one stream-wide reservoir (:class:`ckd.buffer.ReplayBuffer`) on the
training device, offered every stream minibatch after the optimizer step, and replay
from the first step at which it holds samples. The replayed rows join the minibatch in
the strategy's one forward pass, so an augmentation or mixed-precision plugin sees them
too; the strategy's own criterion sees the stream rows only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import ReplayPlugin
from torch import Tensor

from ckd.buffer import ReplayBuffer, ReplaySample
from ckd.losses import asymmetric_logits, logit_mse, replay_cross_entropy, weighted

__all__ = ["DarkExperienceReplayPlugin", "ERACEPlugin", "ExperienceReplayPlugin", "OnlineReplayPlugin", "Replayed"]


class ExperienceReplayPlugin(ReplayPlugin):
    """:class:`avalanche.training.plugins.ReplayPlugin`, its buffer updated after each
    experience through ``storage_policy.post_adapt``: the plugin's own call,
    ``storage_policy.update``, is deprecated in Avalanche 0.6 and re-enables its
    deprecation warning on every call, so no warning filter can silence it."""

    def after_training_exp(self, strategy, **kwargs) -> None:
        self.storage_policy.post_adapt(strategy, strategy.experience)


@dataclass
class Replayed:
    """One draw from the buffer in the current step and its rows' outputs ``(R, C)``."""

    sample: ReplaySample
    logits: Tensor


class _ReservoirReplay(SupervisedPlugin):
    """What :class:`ERACEPlugin` and :class:`DarkExperienceReplayPlugin` share.

    A method draws from ``buffer`` in ``before_forward`` (:meth:`_join`, named draws),
    finds them in ``replay`` (name: :class:`Replayed`) once the forward has run, adds
    its terms in ``before_backward``, and :meth:`_insert` offers the stream minibatch to
    the reservoir after the optimizer step.
    """

    def __init__(self, mem_size: int, replay_batch_size: int, seed: int) -> None:
        super().__init__()
        for name, value in (("mem_size", mem_size), ("replay_batch_size", replay_batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.mem_size = mem_size
        self.replay_batch_size = replay_batch_size
        self.seed = seed
        self.buffer: ReplayBuffer | None = None
        self.replay: dict[str, Replayed] = {}
        self._draws: dict[str, ReplaySample] = {}
        self._current: tuple[Tensor, Tensor, Tensor] | None = None  # the stream rows, before augmentation
        self._joined: tuple[Tensor, ...] | None = None  # the minibatch _join built

    def before_training_exp(self, strategy, **kwargs) -> None:
        device = torch.device(strategy.device)
        if self.buffer is None:
            self.buffer = ReplayBuffer(self.mem_size, "reservoir", device, self.seed)
        self.buffer.to(device)

    def _join(self, strategy, draws: dict[str, ReplaySample]) -> None:
        """Append the rows of ``draws`` to the stream minibatch, in order."""
        x, y, t = strategy.mbatch[0], strategy.mbatch[1], strategy.mbatch[2]
        self._current, self._draws, self.replay = (x, y, t), draws, {}
        if not draws:
            return
        samples = draws.values()
        strategy.mbatch[0] = torch.cat([x, *(s.x for s in samples)])
        strategy.mbatch[1] = torch.cat([y, *(s.y.to(y.dtype) for s in samples)])
        strategy.mbatch[2] = torch.cat([t, *(s.task.to(t.dtype) for s in samples)])
        self._joined = tuple(strategy.mbatch[:3])

    def after_forward(self, strategy, **kwargs) -> None:
        """The strategy keeps the stream rows' inputs and outputs; ``replay`` gets the drawn rows'."""
        if not self._draws:
            return
        n = self._current[0].shape[0]
        out = strategy.mb_output
        parts = out[n:].split([s.x.shape[0] for s in self._draws.values()])
        self.replay = {name: Replayed(s, z) for (name, s), z in zip(self._draws.items(), parts)}
        strategy.mb_output = out[:n]
        if all(a is b for a, b in zip(strategy.mbatch, self._joined)):
            strategy.mbatch[:3] = self._current
        else:  # a plugin replaced the rows (augmented them): the stream rows as the forward saw them
            for i in range(3):
                strategy.mbatch[i] = strategy.mbatch[i][:n]
        self._joined = None

    def after_training_iteration(self, strategy, **kwargs) -> None:
        self._insert(strategy)
        self._current, self._draws, self.replay = None, {}, {}

    def _insert(self, strategy) -> None:
        self.buffer.reservoir_add(*self._current, strategy.experience.current_experience)


class OnlineReplayPlugin(_ReservoirReplay):
    """Experience replay as the online papers run it (Chaudhry et al., "On Tiny Episodic
    Memories in Continual Learning", 2019; ER in ER-ACE, Mammoth): a reservoir offered
    every stream minibatch, ``replay_batch_size`` rows drawn every step once it holds
    samples (the experience being learned included), one cross-entropy over the stream
    and replayed rows together: ``(B·CE(stream) + R·CE(replayed)) / (B + R)``.

    Avalanche's ``ReplayPlugin`` (method ``replay``) instead fills its buffer when an
    experience ends and replays only earlier experiences.
    """

    def __init__(self, *, mem_size: int = 500, replay_batch_size: int = 10, seed: int = 0) -> None:
        super().__init__(mem_size, replay_batch_size, seed)

    def before_forward(self, strategy, **kwargs) -> None:
        self._join(strategy, {} if self.buffer.is_empty else {"ce": self.buffer.sample(self.replay_batch_size)})

    def before_backward(self, strategy, **kwargs) -> None:
        replayed = self.replay.get("ce")
        if replayed is not None:
            n, r = strategy.mb_output.shape[0], replayed.logits.shape[0]
            strategy.loss = (n * strategy.loss + r * replay_cross_entropy(replayed.logits, replayed.sample.y)) / (n + r)


class ERACEPlugin(_ReservoirReplay):
    """ER-ACE (Caccia et al., ICLR 2022): experience replay whose cross-entropy on the
    incoming minibatch leaves out the classes met before that the minibatch does not
    hold (:func:`ckd.losses.asymmetric_logits`), so that learning new classes does not
    push the old ones down, while the replayed rows' cross-entropy covers every output.

    Each step, once the buffer holds samples, ``replay_batch_size`` of its rows are
    drawn and the loss is ``CE(incoming, over its classes and those not met yet)
    + CE(replayed, over every class)``. As in the authors' code, nothing waits for an
    experience boundary: the classes met are those of the incoming rows so far.
    """

    def __init__(self, *, mem_size: int = 500, replay_batch_size: int = 10, seed: int = 0) -> None:
        super().__init__(mem_size, replay_batch_size, seed)
        self.seen_classes: Tensor | None = None  # bool (C,)

    def before_forward(self, strategy, **kwargs) -> None:
        self._join(strategy, {} if self.buffer.is_empty else {"ce": self.buffer.sample(self.replay_batch_size)})

    def after_forward(self, strategy, **kwargs) -> None:
        super().after_forward(strategy)
        out, y = strategy.mb_output, strategy.mbatch[1]
        self.seen_classes = _padded(self.seen_classes, out.shape[1], out.device).index_fill_(0, y, True)
        strategy.mb_output = asymmetric_logits(out, y, self.seen_classes[: out.shape[1]])

    def before_backward(self, strategy, **kwargs) -> None:
        replayed = self.replay.get("ce")
        if replayed is not None:
            strategy.loss += replay_cross_entropy(replayed.logits, replayed.sample.y)


class DarkExperienceReplayPlugin(_ReservoirReplay):
    """DER and DER++ (Buzzega et al., NeurIPS 2020) with the authors' timing: a sample's
    logit targets are the outputs the model gave it in the training step that offered it
    to the reservoir, and both terms start as soon as the buffer holds samples, within
    the first experience.

    Each step, once the buffer holds samples: ``alpha · MSE(z(x_a), z_a)`` on
    ``replay_batch_size`` rows drawn with their stored logits, and ``beta · CE(z(x_b), y_b)``
    on a second, independent draw (DER++; ``beta = 0`` is DER). After the optimizer step
    the reservoir is offered the stream minibatch as it was before augmentation, with
    the outputs of that step's forward.

    Avalanche's ``DER`` (method ``der``) stores the logits of each experience's final
    model when the experience ends and starts its terms at the second experience; at
    the paper's learning rate that diverges on Permuted-MNIST (benchmarks/der_domain_il.md).
    The stream rows and both draws share one forward pass (the authors' code runs three:
    with BatchNorm, the batch statistics differ).
    """

    def __init__(
        self, *, mem_size: int = 500, replay_batch_size: int = 10, alpha: float = 1.0, beta: float = 0.5, seed: int = 0
    ) -> None:
        super().__init__(mem_size, replay_batch_size, seed)
        for name, value in (("alpha", alpha), ("beta", beta)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.alpha = alpha
        self.beta = beta
        self._step_logits: Tensor | None = None  # (B, C): the stream rows' outputs, stored with them

    def before_forward(self, strategy, **kwargs) -> None:
        draws = {}
        if not self.buffer.is_empty:
            if self.alpha > 0:
                draws["mse"] = self.buffer.sample(self.replay_batch_size)
            if self.beta > 0:  # a second, independent draw
                draws["ce"] = self.buffer.sample(self.replay_batch_size)
        self._join(strategy, draws)

    def after_forward(self, strategy, **kwargs) -> None:
        super().after_forward(strategy)
        self._step_logits = strategy.mb_output.detach()

    def before_backward(self, strategy, **kwargs) -> None:
        if "mse" in self.replay:
            z, stored = self.replay["mse"].logits, self.replay["mse"].sample
            strategy.loss += weighted(self.alpha, logit_mse(z, stored.logits, stored.logits_mask))
        if "ce" in self.replay:
            z, y = self.replay["ce"].logits, self.replay["ce"].sample.y
            strategy.loss += weighted(self.beta, replay_cross_entropy(z, y))

    def _insert(self, strategy) -> None:
        self.buffer.reservoir_add(*self._current, strategy.experience.current_experience, logits=self._step_logits)
        self._step_logits = None


def _padded(seen: Tensor | None, width: int, device: torch.device) -> Tensor:
    """bool ``seen`` padded with False to ``width`` classes (none yet, or a head that grew)."""
    if seen is None:
        return torch.zeros(width, dtype=torch.bool, device=device)
    if seen.shape[0] < width:
        return torch.cat([seen, seen.new_zeros(width - seen.shape[0])])
    return seen
