"""The ``replay`` baseline for several seeds at once: each seed's minibatches as tensors.

The sequential ``replay`` run (:class:`ckd.distillation.replay.ExperienceReplayPlugin`) trains
from Avalanche's ``ReplayDataLoader``: each minibatch is ``batch_size`` rows of the
experience and ``replay_batch_size`` rows of the memory, concatenated, and the
loss is the cross-entropy over all of them. Which rows is a function of torch's
global generator, reseeded by :func:`ckd.benchmarking.runner.run` before each experience.
:class:`StackedExperienceReplay` makes the same draws, in the same order, per seed
(the global generator forked around them), and yields every seed's minibatches
stacked, gathered from the experience's and the memory's tensors.

The draws of one experience, in order:

1. per epoch, the replay loader's (:func:`ckd.engines.tensor_replay.replay_rows`, which
   the sequential run's loader draws from too): the ``DataLoader`` iterator's base
   seed, the seed of the experience's ``RandomSampler``, then one seed of the
   memory's ``RandomSampler`` per pass over the memory (when it runs out before
   the epoch ends it starts again, its last batch short when ``replay_batch_size``
   does not divide it); with an empty memory (the first experience) the same
   without the memory's;
2. the storage policy's ``post_adapt``: one weight per new row (``torch.rand``);
   ``reservoir`` keeps the ``mem_size`` rows of highest weight among the new rows
   and the memory, ``experience_balanced`` keeps each experience's highest-weight
   rows, ``mem_size`` split evenly over the experiences seen (the remainder to the
   oldest).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from ckd.engines.tensor_replay import replay_rows

__all__ = ["STACKED_REPLAY_POLICIES", "StackedExperienceReplay", "check_replay_args"]

# The replay policies the stacked run reproduces draw for draw.
STACKED_REPLAY_POLICIES = ("reservoir", "experience_balanced")


Rows = tuple[Tensor, Tensor, Tensor]  # x (N, ...), y (N,), task (N,)


def check_replay_args(args: dict[str, Any]) -> None:
    """Raise a one-line ``ValueError`` for ``replay`` settings the stacked run does not reproduce."""
    if args["policy"] not in STACKED_REPLAY_POLICIES:
        raise ValueError(
            f"vectorize covers the replay policies {STACKED_REPLAY_POLICIES}, got policy={args['policy']!r}: "
            "run without --vectorize"
        )


def _group_lengths(mem_size: int, n_groups: int) -> list[int]:
    """``ExperienceBalancedBuffer``'s share of each group, the remainder to the first ones."""
    lengths = [mem_size // n_groups] * n_groups
    for g in range(mem_size - sum(lengths)):
        lengths[g] += 1
    return lengths


class StackedExperienceReplay:
    """Experience replay of ``S`` seeds: each seed's memory (tensors on ``device``) and
    its sequential run's minibatches.

    ``batches(exp, data)``: the minibatches of experience ``exp``, every epoch, as
    ``x (S, B, ...)``, ``y, t (S, B)`` (``B``: the experience's rows then the memory's).
    ``after_experience(data)``: the storage policy's update, with the weights
    drawn by the last ``batches``.
    """

    def __init__(self, seeds: Sequence[int], *, mem_size: int, replay_batch_size: int, policy: str,
                 batch_size: int, epochs: int, device: torch.device | str = "cpu") -> None:
        check_replay_args({"policy": policy})
        if replay_batch_size < 1:
            raise ValueError(f"replay_batch_size must be >= 1, got {replay_batch_size}")
        self.seeds = list(seeds)
        self.mem_size = mem_size
        self.replay_batch_size = replay_batch_size
        self.policy = policy
        self.batch_size = batch_size
        self.epochs = epochs
        self.device = torch.device(device)
        # Per seed, the memory's groups (one for reservoir, one per experience for
        # experience_balanced): rows and their weights, sorted by decreasing weight.
        self.groups: list[list[tuple[Rows, Tensor]]] = [[] for _ in self.seeds]
        self._weights: list[Tensor] | None = None

    @classmethod
    def from_args(cls, args: dict[str, Any], seeds: Sequence[int], *, batch_size: int, epochs: int,
                  device: torch.device | str) -> "StackedExperienceReplay":
        """From the ``replay`` method's settings (``mem_size``, ``replay_batch_size``, ``policy``)."""
        return cls(seeds, mem_size=args["mem_size"], replay_batch_size=args["replay_batch_size"],
                   policy=args["policy"], batch_size=batch_size, epochs=epochs, device=device)

    def memory(self, s: int) -> Rows | None:
        """Seed ``s``'s memory, in the order of Avalanche's buffer (``None``: empty)."""
        groups = self.groups[s]
        if not groups:
            return None
        return tuple(torch.cat([rows[k] for rows, _ in groups]) for k in range(3))

    def batches(self, exp: int, data: Sequence[Rows]) -> Iterator[Rows]:
        """Every seed's minibatches of experience ``exp`` (all epochs), ``data[s]`` being
        seed ``s``'s experience rows. The draws are made here, before the first batch."""
        if len(data) != len(self.seeds):
            raise ValueError(f"batches needs one experience per seed ({len(self.seeds)}), got {len(data)}")
        memories = [self.memory(s) for s in range(len(self.seeds))]
        sizes = {(d[0].shape[0], 0 if m is None else m[0].shape[0]) for d, m in zip(data, memories)}
        if len(sizes) > 1:
            raise ValueError(
                f"the seeds' (experience, replay memory) sizes differ {sorted(sizes)} at experience {exp}: "
                "vectorize needs equal sizes (no validation split or subsampling that depends on the seed)"
            )
        [(n, m)] = sizes
        steps, weights = zip(*(self._draws(seed, exp, n, m) for seed in self.seeds))
        self._weights = list(weights)
        lengths = [len(step) for step in steps[0]]
        index = torch.stack([torch.cat(seed_steps).to(self.device) for seed_steps in steps])  # (S, all steps' rows)
        pool = [torch.stack([d[k] if mem is None else torch.cat([d[k], mem[k]]) for d, mem in zip(data, memories)])
                for k in range(3)]
        rows = torch.arange(len(self.seeds), device=self.device).unsqueeze(1)
        return ((pool[0][rows, i], pool[1][rows, i], pool[2][rows, i]) for i in index.split(lengths, dim=1))

    def _draws(self, seed: int, exp: int, n: int, m: int) -> tuple[list[Tensor], Tensor]:
        """Seed ``seed``'s minibatches of experience ``exp`` as rows ``(b_k,)`` of
        ``cat(experience (n), memory (m))``, one per step, and the new rows' weights ``(n,)``."""
        steps: list[Tensor] = []
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed * 1000 + exp)  # as ckd.benchmarking.runner.run, before each experience
            for _ in range(self.epochs):
                steps += replay_rows(n, m, self.batch_size, self.replay_batch_size)
            weights = torch.rand(n)
        return steps, weights

    def after_experience(self, data: Sequence[Rows]) -> None:
        """The storage policy's ``post_adapt`` for every seed, ``data[s]`` as given to :meth:`batches`."""
        if self._weights is None:
            raise RuntimeError("after_experience needs the weights drawn by batches(): call batches first")
        for s, (new, weights) in enumerate(zip(data, self._weights)):
            groups = self.groups[s]
            if self.policy == "reservoir":
                old, old_weights = groups[0] if groups else (tuple(a[:0] for a in new), torch.zeros(0))
                kept, order = torch.cat([weights, old_weights]).sort(descending=True)
                index = order[: self.mem_size].to(self.device)
                self.groups[s] = [(tuple(torch.cat([a, o])[index] for a, o in zip(new, old)), kept[: self.mem_size])]
            else:
                lengths = _group_lengths(self.mem_size, len(groups) + 1)
                kept, order = weights.sort(descending=True)
                index = order[: lengths[-1]].to(self.device)
                groups = groups + [(tuple(a[index] for a in new), kept[: lengths[-1]])]
                self.groups[s] = [(tuple(a[:k] for a in rows), w[:k]) for (rows, w), k in zip(groups, lengths)]
        self._weights = None
