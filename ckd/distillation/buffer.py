"""Replay memory: preallocated tensors on the training device.

Two policies:

* ``reservoir`` — updated with every stream minibatch; after ``n`` samples each one is in
  memory with probability ``mem_size / n`` (Vitter's algorithm R, as in DER). Right for
  every scenario, domain-incremental included.
* ``class_balanced`` — refilled at the end of each experience so that every *(experience,
  class)* group seen so far holds an equal share. In a class-incremental stream a class lives
  in one experience, so this is the usual "equal share per class"; in a domain-incremental
  stream, where every experience holds every class, balancing per class alone would let the
  newest experience crowd out the old ones, so each experience keeps its own share.

Storage is allocated on the first insertion (its shapes come from the data) and never
reallocated. Insertion and sampling use tensor indexing and a seeded ``torch.Generator`` on
the buffer's device: no Python loop over samples and no host-device copy in the training step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ckd.distillation.slots import group_index, rank_within_group, reservoir_slots

__all__ = ["POLICIES", "RefillPlan", "ReplayBuffer", "ReplaySample", "StackedBuffers"]

POLICIES = ("reservoir", "class_balanced")

_STORAGE = ("_x", "_y", "_task", "_experience", "_logits", "_logits_mask")
_FIELDS = tuple(name.removeprefix("_") for name in _STORAGE)


class _Filled:
    """Read-only view of the filled rows of a storage tensor (``None`` before any insertion)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.storage = "_" + name

    def __get__(self, buffer: "ReplayBuffer", owner: type | None = None) -> Tensor | None:
        tensor = getattr(buffer, self.storage)
        return None if tensor is None else tensor[: buffer.size]


@dataclass
class RefillPlan:
    """What a class-balanced refill keeps: ``index`` into the new experience,
    and the ``quota (G,)`` of each ``(experience, class)`` group ``(G, 2)``."""

    index: Tensor
    groups: Tensor
    quota: Tensor


@dataclass
class ReplaySample:
    """A minibatch drawn from the buffer. ``index``: the buffer slots ``(R,)``."""

    index: Tensor
    x: Tensor
    y: Tensor
    task: Tensor
    experience: Tensor
    logits: Tensor | None
    logits_mask: Tensor | None


class ReplayBuffer:
    """Fixed-size memory of ``(x, y, task, experience)`` and optional teacher logits.

    ``logits`` ``(M, C)`` hold a teacher's outputs for each slot and
    ``logits_mask`` ``(M, C)`` the classes those logits cover (all False for a
    slot whose logits have not been computed yet).
    """

    def __init__(
        self,
        mem_size: int,
        policy: str = "reservoir",
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        if not isinstance(mem_size, int) or mem_size < 1:
            raise ValueError(f"mem_size must be an integer >= 1, got {mem_size!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.mem_size = mem_size
        self.policy = policy
        self.device = torch.device(device)
        self.seed = seed
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.size = 0  # filled slots (a Python int: no device sync to read it)
        self.seen = 0  # stream samples offered to a reservoir buffer
        self._x: Tensor | None = None
        self._y: Tensor | None = None
        self._task: Tensor | None = None
        self._experience: Tensor | None = None
        self._logits: Tensor | None = None
        self._logits_mask: Tensor | None = None

    def __len__(self) -> int:
        return self.size

    @property
    def is_empty(self) -> bool:
        return self.size == 0

    # ------------------------------------------------------------------ storage
    # Storage has mem_size + 1 rows: the last one is a scratch row that absorbs
    # the writes of rejected samples, so an insertion never needs to know (and
    # sync to learn) how many samples were kept.
    def _allocate(self, x: Tensor) -> None:
        rows, dev = self.mem_size + 1, self.device
        self._x = torch.zeros((rows, *x.shape[1:]), dtype=x.dtype, device=dev)
        self._y = torch.zeros(rows, dtype=torch.long, device=dev)
        self._task = torch.zeros(rows, dtype=torch.long, device=dev)
        self._experience = torch.zeros(rows, dtype=torch.long, device=dev)

    def allocate_logits(self, num_classes: int) -> None:
        """Make room for teacher logits of width ``num_classes`` (grows, never shrinks)."""
        rows = self.mem_size + 1
        if self._logits is not None and self._logits.shape[1] >= num_classes:
            return
        logits = torch.zeros(rows, num_classes, device=self.device)
        mask = torch.zeros(rows, num_classes, dtype=torch.bool, device=self.device)
        if self._logits is not None:
            logits[:, : self._logits.shape[1]] = self._logits
            mask[:, : self._logits.shape[1]] = self._logits_mask
        self._logits, self._logits_mask = logits, mask

    x = _Filled()
    y = _Filled()
    task = _Filled()
    experience = _Filled()
    logits = _Filled()
    logits_mask = _Filled()

    def _check_input(self, x: Tensor, y: Tensor, task: Tensor) -> None:
        if not (x.shape[0] == y.shape[0] == task.shape[0]):
            raise ValueError(
                f"x, y and task must have the same length, got {x.shape[0]}, {y.shape[0]}, {task.shape[0]}"
            )
        if self._x is not None and x.shape[1:] != self._x.shape[1:]:
            raise ValueError(
                f"sample shape {tuple(x.shape[1:])} differs from the buffer's {tuple(self._x.shape[1:])}"
            )
        if self._x is None:
            self._allocate(x)

    def _write(self, slots: Tensor, x: Tensor, y: Tensor, task: Tensor, experience: Tensor | int) -> None:
        _write_rows((self._x, self._y, self._task, self._experience, self._logits_mask), slots, x, y, task, experience)

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated storage (samples, labels, cached logits)."""
        return sum(t.numel() * t.element_size() for name in _STORAGE if (t := getattr(self, name)) is not None)

    def to(self, device: torch.device | str) -> "ReplayBuffer":
        """Move storage and generator to ``device`` (e.g. after loading a checkpoint
        on another machine). The generator is re-seeded from its own next draw."""
        device = torch.device(device)
        if device == self.device:
            return self
        for name in _STORAGE:
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))
        next_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator, device=self.device))
        self.generator = torch.Generator(device=device).manual_seed(next_seed)
        self.device = device
        return self

    # ---------------------------------------------------------------- reservoir
    def reservoir_add(
        self, x: Tensor, y: Tensor, task: Tensor, experience: int = 0, logits: Tensor | None = None
    ) -> Tensor:
        """Offer a stream minibatch ``x (N, ...)``. Returns ``(N,)`` slots, ``-1``
        where a sample was not kept.

        Sample ``i`` is the ``(seen + i)``-th of the stream: it takes slot
        ``seen + i`` while the buffer fills; afterwards a uniform draw
        ``j ∈ [0, seen + i]`` keeps it in slot ``j`` if ``j < mem_size``. When two
        samples of one batch draw the same slot the later one wins, as if they
        had been offered one at a time.

        ``logits (N, C)``: stored with the kept samples, every column a target
        (DER's targets, recorded when a sample enters the memory).
        """
        self._check_input(x, y, task)
        n, m = x.shape[0], self.mem_size
        draw = torch.rand(n, generator=self.generator, device=self.device, dtype=torch.float64)
        slot, keep = reservoir_slots(draw, self.seen, m)
        self._write(slot, x, y, task, experience)
        if logits is not None:  # rejected samples write the scratch row, as above
            every_class = torch.ones(logits.shape[1], dtype=torch.bool, device=self.device)
            self.set_logits(slot, logits.detach(), every_class)
        self.seen += n
        self.size = min(m, self.seen)
        return torch.where(keep, slot, -1)

    # ----------------------------------------------------------- class balanced
    def class_balanced_select(self, y: Tensor, experience: int) -> "RefillPlan":
        """Plan a refill with a new experience whose labels are ``y (N,)``.

        ``plan.index`` are the new samples to load; pass them to
        :meth:`class_balanced_fill` with the plan. Selecting first lets the caller
        load only the samples it keeps.
        Every *(experience, class)* group seen so far gets ``mem_size // groups``
        slots (the remainder goes to the first groups in order); old groups
        keep a prefix of what they hold, new groups a uniform random subset.
        """
        y = y.to(self.device, dtype=torch.long)
        old_groups = self._groups() if self.size else torch.zeros(0, 2, dtype=torch.long, device=self.device)
        new_classes = torch.unique(y)
        new_groups = torch.stack([torch.full_like(new_classes, experience), new_classes], dim=1)
        groups = torch.unique(torch.cat([old_groups, new_groups]), dim=0)  # sorted by (exp, class)
        n_groups = groups.shape[0]
        if n_groups == 0:  # nothing held, nothing offered
            return RefillPlan(y[:0], groups, y[:0])
        quota = torch.full((n_groups,), self.mem_size // n_groups, dtype=torch.long, device=self.device)
        quota[: self.mem_size % n_groups] += 1
        # Old members keep their places up to the quota; new candidates, in random
        # order, fill what is left of their group's quota (all of it for a new group).
        room = quota.clone()
        if self.size:
            held = torch.bincount(group_index(groups, self.experience, self.y), minlength=n_groups)
            room -= torch.minimum(held, quota)
        perm = torch.randperm(y.shape[0], generator=self.generator, device=self.device)
        rank = rank_within_group(y[perm])
        group_of = group_index(groups, torch.full_like(y[perm], experience), y[perm])
        return RefillPlan(perm[rank < room[group_of]], groups, quota)

    def class_balanced_fill(
        self, plan: "RefillPlan", x: Tensor, y: Tensor, task: Tensor, experience: int
    ) -> None:
        """Store the planned samples of a new experience and shrink the old groups."""
        self._check_input(x, y, task)
        groups, quota = plan.groups, plan.quota
        keep_old = torch.zeros(0, dtype=torch.long, device=self.device)
        if self.size:
            old_group = group_index(groups, self.experience, self.y)
            keep_old = (rank_within_group(old_group) < quota[old_group]).nonzero().squeeze(1)
        n_old, n_new = keep_old.shape[0], x.shape[0]
        if n_old + n_new > self.mem_size:
            raise RuntimeError(f"class-balanced refill overflows: {n_old} + {n_new} > {self.mem_size}")
        # Compact the kept old samples to the front (gather first: source and destination overlap).
        for name in _STORAGE:
            t = getattr(self, name)
            if t is not None:
                t[:n_old] = t[keep_old].clone()
        self.size = n_old + n_new
        self._write(torch.arange(n_old, n_old + n_new, device=self.device), x, y, task, experience)
        self.seen += n_new

    def class_balanced_refill(
        self, y: Tensor, experience: int, load: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
    ) -> None:
        """The whole refill with a new experience whose labels are ``y (N,)``: plan it
        (:meth:`class_balanced_select`), load the samples kept, ``load(index) -> (x, y, task)``
        of the experience's rows ``index (K,)``, and store them (:meth:`class_balanced_fill`)."""
        plan = self.class_balanced_select(y, experience)
        if plan.index.numel():
            x, y, task = load(plan.index)
        elif self.is_empty:
            return
        else:  # nothing new to keep; old groups still shrink to their quota
            x, y, task = self.x[:0], self.y[:0], self.task[:0]
        self.class_balanced_fill(plan, x, y, task, experience)

    def _groups(self) -> Tensor:
        return torch.unique(torch.stack([self.experience, self.y], dim=1), dim=0)

    # ----------------------------------------------------------------- sampling
    def sample(self, batch_size: int) -> ReplaySample:
        """Draw ``min(batch_size, len(self))`` distinct slots uniformly at random (the top ``k`` of uniform keys: no host sync)."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        keys, k = self._keys(batch_size), min(batch_size, self.size)
        return self.gather(keys.topk(k, sorted=False).indices if k < self.size else torch.arange(k, device=self.device))

    def sample_before(self, batch_size: int, experience: int) -> ReplaySample | None:
        """:meth:`sample` among the slots of experiences before ``experience`` (``None``: none), one host sync."""
        keys = self._keys(batch_size) if self.size else None
        eligible = self.experience < experience if self.size else None
        k = 0 if keys is None else min(batch_size, int(eligible.sum()))
        return self.gather(keys.masked_fill(~eligible, -1.0).topk(k, sorted=False).indices) if k else None

    def _keys(self, batch_size: int) -> Tensor:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return torch.rand(self.size, generator=self.generator, device=self.device)

    def gather(self, index: Tensor) -> ReplaySample:
        """The rows of slots ``index (R,)`` (``index_select``: a plain gather, several
        times cheaper than advanced indexing for a minibatch)."""
        logits, mask = self._logits, self._logits_mask
        return ReplaySample(
            index=index,
            x=self._x.index_select(0, index),
            y=self._y.index_select(0, index),
            task=self._task.index_select(0, index),
            experience=self._experience.index_select(0, index),
            logits=None if logits is None else logits.index_select(0, index),
            logits_mask=None if mask is None else mask.index_select(0, index),
        )

    def set_logits(self, index: Tensor, logits: Tensor, mask: Tensor) -> None:
        """Cache teacher ``logits (K, C)`` covering ``mask`` (``(C,)`` or ``(K, C)``) for slots ``index``."""
        self.allocate_logits(logits.shape[1])
        width = logits.shape[1]
        self._logits[index, :width] = logits.to(self._logits.dtype)
        self._logits[index, width:] = 0.0
        self._logits_mask[index] = False
        self._logits_mask[index, :width] = mask.to(self.device, torch.bool).expand(index.shape[0], width)

    def cache_logits(
        self, logits_of: Callable[[ReplaySample], tuple[Tensor, Tensor | None]], only_new: bool = False,
        batch_size: int = 1000,
    ) -> None:
        """Cache a teacher's logits for every slot (``only_new``: the slots without any yet), in
        passes of ``batch_size`` slots: ``logits_of(rows) -> (logits (K, C), mask (K, C))``, the
        mask ``None`` when every class is a target."""
        slots = torch.arange(self.size, device=self.device)
        if only_new and self.logits_mask is not None:
            slots = (~self.logits_mask.any(dim=1)).nonzero().squeeze(1)  # once per experience
        for start in range(0, slots.shape[0], batch_size):
            index = slots[start : start + batch_size]
            logits, mask = logits_of(self.gather(index))
            self.set_logits(index, logits, torch.ones_like(logits, dtype=torch.bool) if mask is None else mask)

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {
            "mem_size": self.mem_size,
            "policy": self.policy,
            "device": str(self.device),
            "seed": self.seed,
            "size": self.size,
            "seen": self.seen,
            "generator": self.generator.get_state(),
            **{name: getattr(self, name) for name in _STORAGE},
        }

    def load_state_dict(self, state: dict) -> None:
        if state["mem_size"] != self.mem_size or state["policy"] != self.policy:
            raise ValueError(
                f"checkpoint buffer (mem_size={state['mem_size']}, policy={state['policy']!r}) does not match "
                f"this buffer (mem_size={self.mem_size}, policy={self.policy!r})"
            )
        self.size, self.seen, self.seed = state["size"], state["seen"], state["seed"]
        for name in _STORAGE:
            t = state[name]
            setattr(self, name, None if t is None else t.to(self.device))
        self.generator.set_state(state["generator"])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["generator"] = (self.generator.device.type, self.generator.get_state())
        return state

    def __setstate__(self, state: dict) -> None:
        device_type, rng_state = state["generator"]
        state["generator"] = torch.Generator(device=state["device"])
        state["generator"].set_state(rng_state)
        self.__dict__.update(state)


class StackedBuffers:
    """Several buffers (one per seed of a vectorized run) sampled in one pass.

    Their storage is stacked ``(S, mem_size + 1, ...)`` and each buffer's tensors
    become views of the stack (a buffer writes in place and never reallocates, except
    when its cached logits grow: the stack is rebuilt then), so one ``topk`` and one
    gather per field draw every seed's replay rows. Each buffer's keys come from its
    own generator, as :meth:`ReplayBuffer.sample` draws them: each seed gets the rows
    its sequential run gets.
    """

    def __init__(self, buffers: list[ReplayBuffer]) -> None:
        self.buffers = buffers
        self.stacks: dict[str, Tensor | None] = {}
        self._views: tuple = ()
        self._offsets: Tensor | None = None  # (S, 1): each buffer's first row in the flattened stack
        self._mixed: set[str] = set()  # fields some buffers hold and others do not (or in other widths)

    def _storage(self) -> tuple:
        return tuple(getattr(b, name) for b in self.buffers for name in _STORAGE)

    def _restack(self) -> None:
        if len(self._views) and all(a is b for a, b in zip(self._storage(), self._views)):
            return
        self._mixed = set()
        for name in _STORAGE:
            parts = [getattr(b, name) for b in self.buffers]
            if any(p is None or p.shape != parts[0].shape for p in parts):
                self.stacks[name] = None
                if any(p is not None for p in parts):  # some buffers have it, or in other widths
                    self._mixed.add(name.removeprefix("_"))
                continue
            self.stacks[name] = torch.stack(parts)
            for buffer, view in zip(self.buffers, self.stacks[name].unbind(0)):
                setattr(buffer, name, view)
        self._views = self._storage()
        n, rows = self.stacks["_x"].shape[:2]
        self._offsets = torch.arange(0, n * rows, rows, device=self.stacks["_x"].device).unsqueeze(1)

    def reservoir_add(self, x: Tensor, y: Tensor, task: Tensor, experience: int = 0) -> None:
        """Every buffer's :meth:`ReplayBuffer.reservoir_add` of its own minibatch, ``x (S, n, ...)``,
        ``y``, ``task (S, n)``: each buffer's draws from its own generator, one batched write."""
        first = self.buffers[0]
        if first._x is not None:
            self._restack()
        if first._x is None or self._mixed or any(b.seen != first.seen for b in self.buffers):
            for s, buffer in enumerate(self.buffers):  # allocate, or buffers that differ: one at a time
                buffer.reservoir_add(x[s], y[s], task[s], experience)
            return
        first._check_input(x[0], y[0], task[0])
        n_buffers, n = x.shape[:2]
        draw = torch.empty(n_buffers, n, dtype=torch.float64, device=first.device)
        for row, buffer in zip(draw.unbind(0), self.buffers):
            row.uniform_(generator=buffer.generator)  # = torch.rand(n, generator=..., dtype=float64)
        slot, _ = reservoir_slots(draw, first.seen, first.mem_size)
        flat = (slot + self._offsets).reshape(-1)
        storage = [None if (t := self.stacks[name]) is None else t.flatten(0, 1)
                   for name in ("_x", "_y", "_task", "_experience", "_logits_mask")]
        _write_rows(storage, flat, x.reshape(-1, *x.shape[2:]), y.reshape(-1), task.reshape(-1), experience)
        for buffer in self.buffers:
            buffer.seen += n
            buffer.size = min(buffer.mem_size, buffer.seen)

    def sample(self, batch_size: int, fields: tuple[str, ...] = _FIELDS) -> dict[str, Tensor | None]:
        """Every buffer's :meth:`ReplayBuffer.sample`, stacked: ``x (S, R, ...)``, ``y``,
        ``task``, ``experience (S, R)``, ``logits (S, R, C)`` and ``logits_mask`` (``None``
        when no logits are cached); only ``fields`` are gathered."""
        size = self.buffers[0].size
        if any(b.size != size for b in self.buffers):  # one draw each, then stacked
            draws = [b.sample(batch_size) for b in self.buffers]
            if len({d.x.shape[0] for d in draws}) > 1:
                raise ValueError(
                    f"the buffers hold {sorted(b.size for b in self.buffers)} samples, too few for one replay batch "
                    f"of {batch_size} each: their draws cannot be stacked (lower replay_batch_size)"
                )
            return {
                name: None if getattr(draws[0], name) is None else torch.stack([getattr(d, name) for d in draws])
                for name in fields
            }
        if size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._restack()
        if self._mixed & set(fields):
            raise ValueError(f"only some buffers hold {sorted(self._mixed & set(fields))} (or in other widths): "
                             "they cannot be drawn from together")
        n, k, device = len(self.buffers), min(batch_size, size), self.buffers[0].device
        keys = torch.empty(n, size, device=device)
        for row, buffer in zip(keys.unbind(0), self.buffers):
            row.uniform_(generator=buffer.generator)  # = torch.rand(size, generator=...)
        if k < size:
            index = keys.topk(k, dim=1, sorted=False).indices
        else:
            index = torch.arange(k, device=device).expand(n, k)
        flat = (index + self._offsets).reshape(-1)
        return {
            name: None if (t := self.stacks["_" + name]) is None
            else t.flatten(0, 1).index_select(0, flat).view(n, k, *t.shape[2:])
            for name in fields
        }


def _write_rows(
    storage: Sequence[Tensor | None], slots: Tensor, x: Tensor, y: Tensor, task: Tensor, experience: Tensor | int
) -> None:
    """Write rows into ``storage`` = ``(x, y, task, experience, logits_mask or None)`` tensors
    (rows first) at ``slots (N,)``; the written slots' cached logits become stale."""
    x_store, y_store, task_store, experience_store, mask_store = storage
    device = x_store.device
    x_store[slots] = x.to(device, dtype=x_store.dtype, non_blocking=True)
    y_store[slots] = y.to(device, dtype=torch.long, non_blocking=True)
    task_store[slots] = task.to(device, dtype=torch.long, non_blocking=True)
    # A Python scalar written through indexing is copied from the host first (a sync on
    # CUDA); index_fill_ takes it as an argument.
    if isinstance(experience, Tensor):
        experience_store[slots] = experience.to(device)
    else:
        experience_store.index_fill_(0, slots, experience)
    if mask_store is not None:
        mask_store.index_fill_(0, slots, False)  # the previous occupant's logits are stale
