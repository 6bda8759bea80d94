"""The replay baselines, each a plugin on a plain strategy (``Naive``).

* :class:`ExperienceReplayPlugin` (``replay``): Avalanche's experience replay.
* :class:`OnlineReplayPlugin` (``er``): experience replay with a reservoir offered every
  minibatch, as the online papers run it.
* :class:`ERACEPlugin` (``er-ace``): experience replay with ER-ACE's asymmetric
  cross-entropy (Caccia et al., ICLR 2022).
* :class:`DarkExperienceReplayPlugin` (``der-authors``): DER and DER++ (Buzzega et
  al., NeurIPS 2020) with the timing of the authors' code.

The last three keep one stream-wide reservoir (:class:`ckd.distillation.buffer.ReplayBuffer`) on the
training device, offered every stream minibatch after the optimizer step, and replay
from the first step at which it holds samples. As in the authors' code (Caccia et al.'s
AML, Buzzega et al.'s Mammoth), each draw runs in its own forward pass after the stream
rows' (with BatchNorm, each pass normalises with its own rows' statistics), through the
strategy's ``forward`` as plugins wrap it, so that augmentation and mixed precision apply
to the replayed rows as to the stream rows; the losses are sums of per-pass means. The
strategy's criterion and the other plugins see the stream rows only. ``joint_forward``
instead appends the draws to the stream rows in one pass (the same losses), to measure
what sharing the batch statistics does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import ReplayPlugin
from torch import Tensor

from ckd.distillation.buffer import ReplayBuffer, ReplaySample
from ckd.distillation.losses import asymmetric_logits, logit_mse, replay_cross_entropy, weighted

__all__ = ["REPLAY_POLICIES", "DarkExperienceReplayPlugin", "ERACEPlugin", "ExperienceReplayPlugin", "OnlineReplayPlugin",
           "Replayed"]

# The memory policies of the ``replay`` method (Avalanche's ReplayPlugin): its storage policy by name
# (ReservoirSamplingBuffer, ExperienceBalancedBuffer, ClassBalancedBuffer).
REPLAY_POLICIES = ("reservoir", "experience_balanced", "class_balanced")


class ExperienceReplayPlugin(ReplayPlugin):
    """:class:`avalanche.training.plugins.ReplayPlugin`, its buffer updated after each
    experience through ``storage_policy.post_adapt``: the plugin's own call,
    ``storage_policy.update``, is deprecated in Avalanche 0.6 and re-enables its
    deprecation warning on every call, so no warning filter can silence it."""

    def after_training_exp(self, strategy, **kwargs) -> None:
        self.storage_policy.post_adapt(strategy, strategy.experience)

    def state_dict(self) -> dict:
        """The storage policy, its datasets subsets of the stream's (a checkpoint writes
        them as references to the stream's data, :func:`ckd.benchmarking.checkpoint.write_checkpoint`)."""
        return {"storage_policy": self.storage_policy}

    def load_state_dict(self, state: dict) -> None:
        self.storage_policy = state["storage_policy"]


@dataclass
class Replayed:
    """One draw from the buffer in the current step and its rows' outputs ``(R, C)``."""

    sample: ReplaySample
    logits: Tensor


class _ReservoirReplay(SupervisedPlugin):
    """What :class:`OnlineReplayPlugin`, :class:`ERACEPlugin` and :class:`DarkExperienceReplayPlugin` share.

    A method draws from ``buffer`` in ``before_forward`` (:meth:`_draw`, named draws),
    finds them in ``replay`` (name: :class:`Replayed`) once the forward has run, adds
    its terms in ``before_backward``, and :meth:`_insert` offers the stream minibatch to
    the reservoir after the optimizer step. ``joint_forward``: the draws' rows appended
    to the stream rows in the strategy's one forward pass, rather than a pass of their own each.
    """

    def __init__(self, mem_size: int, replay_batch_size: int, seed: int, joint_forward: bool) -> None:
        super().__init__()
        for name, value in (("mem_size", mem_size), ("replay_batch_size", replay_batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(joint_forward, bool):
            raise ValueError(f"joint_forward must be true or false, got {joint_forward!r}")
        self.mem_size = mem_size
        self.replay_batch_size = replay_batch_size
        self.seed = seed
        self.joint_forward = joint_forward
        self.buffer: ReplayBuffer | None = None
        self.replay: dict[str, Replayed] = {}
        self._draws: dict[str, ReplaySample] = {}
        self._current: tuple[Tensor, Tensor, Tensor] | None = None  # the stream rows, before augmentation
        self._joined: tuple[Tensor, ...] | None = None  # the minibatch a joint forward was given

    def before_training_exp(self, strategy, **kwargs) -> None:
        device = torch.device(strategy.device)
        if self.buffer is None:
            self.buffer = ReplayBuffer(self.mem_size, "reservoir", device, self.seed)
        self.buffer.to(device)

    def _draw(self, strategy, draws: dict[str, ReplaySample]) -> None:
        """Keep the stream rows and ``draws`` for this step; with ``joint_forward``, append
        the draws' rows to the stream minibatch, in order."""
        x, y, t = strategy.mbatch[0], strategy.mbatch[1], strategy.mbatch[2]
        self._current, self._draws, self.replay = (x, y, t), draws, {}
        if self.joint_forward and draws:
            rows = [_rows(s, y, t) for s in draws.values()]
            strategy.mbatch[:3] = [torch.cat([part, *(r[i] for r in rows)]) for i, part in enumerate((x, y, t))]
            self._joined = tuple(strategy.mbatch[:3])

    def after_forward(self, strategy, **kwargs) -> None:
        """``replay`` gets each draw's outputs ``(R, C)``, from its own pass through the strategy's
        forward after the stream rows' (or split from the joint pass); the strategy keeps the stream rows'."""
        if not self._draws:
            return
        if self.joint_forward:
            self._split(strategy)
        else:
            self.replay = {name: Replayed(s, self._forward(strategy, s)) for name, s in self._draws.items()}

    def _forward(self, strategy, sample: ReplaySample) -> Tensor:
        """``strategy.forward()`` with ``sample``'s rows as the minibatch, through the wrappers
        plugins put on it (augmentation, autocast); the stream minibatch is put back after."""
        stream = strategy.mbatch
        strategy.mbatch = list(_rows(sample, stream[1], stream[2]))
        try:
            return strategy.forward()
        finally:
            strategy.mbatch = stream

    def _split(self, strategy) -> None:
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

    def state_dict(self) -> dict:
        """What the plugin keeps between experiences: the buffer (tensors and generator)."""
        return {"buffer": None if self.buffer is None else self.buffer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        buffer = state["buffer"]
        self.buffer = None
        if buffer is not None:
            self.buffer = ReplayBuffer(self.mem_size, "reservoir", buffer["device"], self.seed)
            self.buffer.load_state_dict(buffer)


class OnlineReplayPlugin(_ReservoirReplay):
    """Experience replay as the online papers run it (Chaudhry et al., "On Tiny Episodic
    Memories in Continual Learning", 2019; ER in ER-ACE's code, Mammoth): a reservoir
    offered every stream minibatch, ``replay_batch_size`` rows drawn every step once it
    holds samples (the experience being learned included), forwarded after the stream
    rows in a pass of their own; the loss is ``CE(stream) + CE(replayed)``, a sum of two
    means, as ER in the ER-ACE authors' code.

    ``earlier_experiences_only``: draw only samples of experiences before the one being
    learned, so replay starts with the second experience — the task-aware ER of the
    ER-ACE authors' code (its default, ``task_free = 0``), whose numbers their paper
    reports for ER. Avalanche's ``ReplayPlugin`` (method ``replay``) also replays only
    earlier experiences, but fills its buffer when an experience ends and forwards the
    replayed rows with the stream's.
    """

    def __init__(
        self, *, mem_size: int = 500, replay_batch_size: int = 10, seed: int = 0, joint_forward: bool = False,
        earlier_experiences_only: bool = False,
    ) -> None:
        super().__init__(mem_size, replay_batch_size, seed, joint_forward)
        if not isinstance(earlier_experiences_only, bool):
            raise ValueError(f"earlier_experiences_only must be true or false, got {earlier_experiences_only!r}")
        self.earlier_experiences_only = earlier_experiences_only

    def before_forward(self, strategy, **kwargs) -> None:
        if self.buffer.is_empty:
            draw = None
        elif self.earlier_experiences_only:
            draw = self.buffer.sample_before(self.replay_batch_size, strategy.experience.current_experience)
        else:
            draw = self.buffer.sample(self.replay_batch_size)
        self._draw(strategy, {} if draw is None else {"ce": draw})

    def before_backward(self, strategy, **kwargs) -> None:
        replayed = self.replay.get("ce")
        if replayed is not None:
            strategy.loss += replay_cross_entropy(replayed.logits, replayed.sample.y)


class ERACEPlugin(OnlineReplayPlugin):
    """ER-ACE (Caccia et al., ICLR 2022): experience replay whose cross-entropy on the
    incoming minibatch leaves out the classes met before that the minibatch does not
    hold (:func:`ckd.distillation.losses.asymmetric_logits`), so that learning new classes does not
    push the old ones down, while the replayed rows' cross-entropy covers every output.

    Each step, once the buffer holds samples, ``replay_batch_size`` of its rows are
    drawn and forwarded in a pass of their own, and the loss is ``CE(incoming, over its
    classes and those not met yet) + CE(replayed, over every class)``. As in the
    authors' code, nothing waits for an experience boundary: the classes met are those
    of the incoming rows so far.
    """

    def __init__(
        self, *, mem_size: int = 500, replay_batch_size: int = 10, seed: int = 0, joint_forward: bool = False
    ) -> None:
        super().__init__(mem_size=mem_size, replay_batch_size=replay_batch_size, seed=seed, joint_forward=joint_forward)
        self.seen_classes: Tensor | None = None  # bool (C,)

    def after_forward(self, strategy, **kwargs) -> None:
        super().after_forward(strategy)
        out, y = strategy.mb_output, strategy.mbatch[1]
        self.seen_classes = _padded(self.seen_classes, out.shape[1], out.device).index_fill_(0, y, True)
        strategy.mb_output = asymmetric_logits(out, y, self.seen_classes[: out.shape[1]])

    def state_dict(self) -> dict:
        return {**super().state_dict(), "seen_classes": self.seen_classes}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.seen_classes = state["seen_classes"]


class DarkExperienceReplayPlugin(_ReservoirReplay):
    """DER and DER++ (Buzzega et al., NeurIPS 2020) with the authors' timing: a sample's
    logit targets are the outputs the model gave it in the training step that offered it
    to the reservoir, and both terms start as soon as the buffer holds samples, within
    the first experience.

    Each step, once the buffer holds samples, the loss is ``CE(stream) + alpha · MSE(z(x_a), z_a)
    + beta · CE(z(x_b), y_b)``: ``(x_a, z_a)``, ``replay_batch_size`` rows drawn with their
    stored logits, and ``(x_b, y_b)`` a second, independent draw (DER++; ``beta = 0`` is
    DER, and draws once). After the optimizer step the reservoir is offered the stream
    minibatch as it was before augmentation, with the outputs of that step's stream forward.

    Avalanche's ``DER`` (method ``der``) stores the logits of each experience's final
    model when the experience ends and starts its terms at the second experience; at
    the paper's learning rate that diverges on Permuted-MNIST (benchmarks/der_domain_il.md).
    The stream rows and each draw run in forward passes of their own, in that order, as
    in the authors' code.
    """

    def __init__(
        self,
        *,
        mem_size: int = 500,
        replay_batch_size: int = 10,
        alpha: float = 1.0,
        beta: float = 0.5,
        seed: int = 0,
        joint_forward: bool = False,
    ) -> None:
        super().__init__(mem_size, replay_batch_size, seed, joint_forward)
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
        self._draw(strategy, draws)

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


def _rows(sample: ReplaySample, y: Tensor, task: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``sample``'s ``(x, y, task)``, its labels in the dtypes of the stream's ``y`` and ``task``."""
    return sample.x, sample.y.to(y.dtype), sample.task.to(task.dtype)


def _padded(seen: Tensor | None, width: int, device: torch.device) -> Tensor:
    """bool ``seen`` padded with False to ``width`` classes (none yet, or a head that grew)."""
    if seen is None:
        return torch.zeros(width, dtype=torch.bool, device=device)
    if seen.shape[0] < width:
        return torch.cat([seen, seen.new_zeros(width - seen.shape[0])])
    return seen
