import pickle

import pytest
import torch

from ckd.distillation.buffer import ReplayBuffer, StackedBuffers

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _stream_batch(start: int, n: int):
    idx = torch.arange(start, start + n)
    x = idx.float().unsqueeze(1).repeat(1, 3)  # each sample remembers its stream position
    return x, idx % 10, torch.zeros(n, dtype=torch.long)


def test_reservoir_stores_the_logits_given_with_the_kept_samples():
    buf = ReplayBuffer(12, "reservoir", seed=0)
    for start in range(0, 40, 8):
        x, y, t = _stream_batch(start, 8)
        logits = x[:, :1] * torch.tensor([[1.0, -1.0, 0.5]])  # each row's logits name its stream position
        slots = buf.reservoir_add(x, y, t, logits=logits)
        kept = slots >= 0
        assert torch.equal(buf.logits[slots[kept]], logits[kept])
    assert torch.equal(buf.logits, buf.x[:, :1] * torch.tensor([[1.0, -1.0, 0.5]]))
    assert bool(buf.logits_mask.all())


def test_reservoir_fills_in_order_then_keeps_size():
    buf = ReplayBuffer(25, "reservoir", seed=0)
    slots = buf.reservoir_add(*_stream_batch(0, 10))
    assert slots.tolist() == list(range(10))
    buf.reservoir_add(*_stream_batch(10, 10))
    assert len(buf) == 20
    assert buf.x[:, 0].tolist() == [float(i) for i in range(20)]
    buf.reservoir_add(*_stream_batch(20, 10))
    assert len(buf) == 25 and buf.seen == 30
    kept = buf.x[:, 0].long()
    assert kept.unique().numel() == 25 and kept.min() >= 0 and kept.max() < 30
    for _ in range(50):
        buf.reservoir_add(*_stream_batch(0, 10))
    assert len(buf) == 25


def test_reservoir_keeps_each_stream_sample_with_probability_mem_over_seen():
    # 200 independent seeded runs over a stream of 2000 samples in batches of 10, mem 100:
    # every position must be kept with probability 100/2000 = 0.05. Per bin of 200 positions,
    # the expected count is 200·200·0.05 = 2000 with sd ≈ sqrt(2000·0.95) ≈ 44, so ±8 % is 3.7 sd.
    # A buffer biased to recent samples (e.g. FIFO) puts all 20000 in the last bin and fails.
    mem, n, batch, runs, bins = 100, 2000, 10, 200, 10
    counts = torch.zeros(n)
    for seed in range(runs):
        buf = ReplayBuffer(mem, "reservoir", seed=seed)
        for start in range(0, n, batch):
            buf.reservoir_add(*_stream_batch(start, batch))
        positions = buf.x[:, 0].long()
        assert positions.unique().numel() == mem  # no slot holds a duplicate
        counts[positions] += 1
    per_bin = counts.view(bins, -1).sum(1)
    expected = runs * (n // bins) * mem / n
    assert torch.all((per_bin - expected).abs() < 0.08 * expected), per_bin.tolist()


def test_reservoir_late_sample_within_a_batch_wins_its_slot():
    buf = ReplayBuffer(1, "reservoir", seed=0)
    buf.reservoir_add(*_stream_batch(0, 1))
    # 1000 draws into a single slot: the survivor must be the last sample that drew slot 0.
    slots = buf.reservoir_add(*_stream_batch(1, 1000))
    kept = (slots == 0).nonzero().squeeze(1)
    assert kept.numel() == 1
    assert buf.x[0, 0].item() == 1.0 + kept.item()


def _class_balanced_update(buf, y, experience, feature_dim=4):
    plan = buf.class_balanced_select(y, experience)
    x = torch.randn(plan.index.numel(), feature_dim)
    task = torch.zeros(plan.index.numel(), dtype=torch.long)
    buf.class_balanced_fill(plan, x, y[plan.index], task, experience)


def test_class_balanced_equal_share_per_class_after_each_experience():
    buf = ReplayBuffer(30, "class_balanced", seed=0)
    for exp in range(5):
        y = torch.arange(2 * exp, 2 * exp + 2).repeat(100)
        _class_balanced_update(buf, y, exp)
        counts = torch.bincount(buf.y, minlength=10)[: 2 * exp + 2]
        assert len(buf) == 30
        assert counts.max() - counts.min() <= 1, counts.tolist()
        assert set(buf.experience.tolist()) == set(range(exp + 1))


def test_class_balanced_keeps_every_experience_in_a_domain_incremental_stream():
    # Every experience holds all 10 classes: each experience must keep its own share.
    buf = ReplayBuffer(200, "class_balanced", seed=0)
    for exp in range(4):
        _class_balanced_update(buf, torch.arange(10).repeat(50), exp)
    per_exp = torch.bincount(buf.experience, minlength=4)
    assert per_exp.tolist() == [50, 50, 50, 50]
    per_group = torch.bincount(buf.experience * 10 + buf.y, minlength=40)
    assert per_group.min() == per_group.max() == 5


def test_class_balanced_with_fewer_samples_than_quota():
    buf = ReplayBuffer(100, "class_balanced", seed=0)
    _class_balanced_update(buf, torch.tensor([0, 0, 1]), 0)
    assert len(buf) == 3
    assert sorted(buf.y.tolist()) == [0, 0, 1]


@pytest.mark.parametrize("device", DEVICES)
def test_sample_shapes_dtypes_device_and_distinct_slots(device):
    buf = ReplayBuffer(50, "reservoir", device=device, seed=0)
    x = torch.rand(40, 1, 8, 8, device=device)
    buf.reservoir_add(x, torch.randint(0, 10, (40,), device=device), torch.zeros(40, dtype=torch.long, device=device))
    s = buf.sample(16)
    assert s.x.shape == (16, 1, 8, 8) and s.x.dtype == torch.float32
    assert s.y.shape == (16,) and s.y.dtype == torch.long and s.task.dtype == torch.long
    assert s.x.device.type == device and s.index.device.type == device
    assert s.index.unique().numel() == 16
    assert torch.equal(s.x, x[s.index])
    assert buf.sample(1000).x.shape[0] == 40


def test_sample_before_draws_only_earlier_experiences_with_the_same_keys_as_sample():
    def filled():
        buf = ReplayBuffer(20, "reservoir", device="cpu", seed=3)
        for exp in range(3):  # 6 rows of each experience, labels 10·exp + row
            buf.reservoir_add(torch.rand(6, 2), torch.arange(6) + 10 * exp, torch.zeros(6, dtype=torch.long), exp)
        return buf

    buf = filled()
    assert buf.sample_before(4, 0) is None  # nothing before the first experience
    s = buf.sample_before(4, 2)
    assert s.index.unique().numel() == 4 and bool((s.experience < 2).all()) and bool((s.y < 20).all())
    assert torch.equal(buf.sample_before(100, 1).y.sort().values, torch.arange(6))  # every eligible row, no more
    # With every row eligible it is sample(): the same generator draws, the same slots.
    a, b = filled(), filled()
    assert torch.equal(a.sample_before(5, 3).index.sort().values, b.sample(5).index.sort().values)


def test_sampling_is_seeded():
    def draw(seed):
        buf = ReplayBuffer(50, "reservoir", seed=seed)
        buf.reservoir_add(*_stream_batch(0, 200))
        return buf.sample(10).index.tolist()

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_cached_logits_are_invalidated_when_a_slot_is_overwritten():
    buf = ReplayBuffer(4, "reservoir", seed=0)
    buf.reservoir_add(*_stream_batch(0, 4))
    buf.set_logits(torch.arange(4), torch.randn(4, 10), torch.ones(10, dtype=torch.bool))
    assert buf.logits_mask.all()
    slots = buf.reservoir_add(*_stream_batch(4, 40))
    written = slots[slots >= 0].unique()
    assert written.numel() > 0
    assert not buf.logits_mask[written].any()


def test_empty_buffer_and_bad_arguments():
    with pytest.raises(RuntimeError, match="empty replay buffer"):
        ReplayBuffer(10).sample(4)
    with pytest.raises(ValueError, match="mem_size must be an integer >= 1, got 0"):
        ReplayBuffer(0)
    with pytest.raises(ValueError, match="policy must be one of"):
        ReplayBuffer(10, policy="fifo")
    buf = ReplayBuffer(10)
    buf.reservoir_add(*_stream_batch(0, 3))
    with pytest.raises(ValueError, match="sample shape"):
        buf.reservoir_add(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_pickle_round_trip_keeps_contents_and_random_state():
    buf = ReplayBuffer(30, "reservoir", seed=1)
    buf.reservoir_add(*_stream_batch(0, 100))
    copy = pickle.loads(pickle.dumps(buf))
    assert torch.equal(copy.x, buf.x) and copy.seen == buf.seen
    assert torch.equal(copy.sample(5).index, buf.sample(5).index)


def test_class_balanced_refill_with_the_same_experience_again_stays_within_quota():
    buf = ReplayBuffer(40, "class_balanced", seed=0)
    _class_balanced_update(buf, torch.arange(0, 2).repeat(100), 0)
    for _ in range(3):  # e.g. a strategy trained twice on experience 1
        _class_balanced_update(buf, torch.arange(2, 4).repeat(100), 1)
        assert len(buf) == 40
        assert torch.bincount(buf.y, minlength=4).tolist() == [10, 10, 10, 10]


def test_class_balanced_refill_of_an_empty_buffer_with_an_empty_experience_keeps_it_empty():
    buf = ReplayBuffer(40, "class_balanced", seed=0)
    plan = buf.class_balanced_select(torch.zeros(0, dtype=torch.long), 0)
    assert plan.index.numel() == 0
    buf.class_balanced_refill(torch.zeros(0, dtype=torch.long), 0, lambda index: pytest.fail("nothing to load"))
    assert buf.is_empty
    _class_balanced_update(buf, torch.arange(0, 2).repeat(100), 1)  # and fills as usual afterwards
    assert torch.bincount(buf.y, minlength=2).tolist() == [20, 20]


def _seed_batches(n_batches: int, n: int, n_buffers: int = 3, feature_dim: int = 2):
    """Stream minibatches ``x (S, n, feature_dim)``, ``y``, ``task (S, n)``, different for every buffer."""
    g = torch.Generator().manual_seed(1234)
    for _ in range(n_batches):
        yield (
            torch.randn(n_buffers, n, feature_dim, generator=g),
            torch.randint(0, 10, (n_buffers, n), generator=g),
            torch.randint(0, 5, (n_buffers, n), generator=g),
        )


def _buffers(mem_size: int, device: str = "cpu", policy: str = "reservoir", seeds=(0, 1, 2)):
    return [ReplayBuffer(mem_size, policy, device=device, seed=s) for s in seeds]


def _assert_same_contents(stacked: ReplayBuffer, alone: ReplayBuffer):
    assert (stacked.size, stacked.seen) == (alone.size, alone.seen)
    for name in ("x", "y", "task", "experience", "logits", "logits_mask"):
        a, b = getattr(stacked, name), getattr(alone, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), name


def _assert_stacked_draws_match(stacked: StackedBuffers, alone: list[ReplayBuffer], k: int, draws: int = 3,
                                fields=("x", "y", "task", "experience")):
    for _ in range(draws):  # several in a row: each buffer's generator must stay in step
        out = stacked.sample(k, fields)
        assert set(out) == set(fields)
        for s, buffer in enumerate(alone):
            expected = buffer.sample(k)
            for name in fields:
                assert torch.equal(out[name][s], getattr(expected, name)), (s, name)


@pytest.mark.parametrize("device", DEVICES)
def test_stacked_sample_is_each_buffers_own_sample(device):
    stacked_buffers, alone = _buffers(40, device), _buffers(40, device)
    stacked = StackedBuffers(stacked_buffers)
    for x, y, task in _seed_batches(5, 6):  # 30 rows: not full
        for s in range(3):
            stacked_buffers[s].reservoir_add(x[s], y[s], task[s], 1)
            alone[s].reservoir_add(x[s], y[s], task[s], 1)
    for k in (7, 30, 50):  # fewer rows than the buffer holds, all of them, more
        _assert_stacked_draws_match(stacked, alone, k)
    _assert_stacked_draws_match(stacked, alone, 7, fields=("x", "y"))


def test_stacked_sample_of_buffers_of_different_sizes_draws_from_each_alone():
    stacked_buffers, alone = _buffers(40), _buffers(40)
    stacked = StackedBuffers(stacked_buffers)
    for s, rows in enumerate((12, 30, 21)):
        for buffers in (stacked_buffers, alone):
            buffers[s].reservoir_add(*_stream_batch(100 * s, rows))
    assert [b.size for b in stacked_buffers] == [12, 30, 21]
    _assert_stacked_draws_match(stacked, alone, 9)


@pytest.mark.parametrize("device", DEVICES)
def test_stacked_reservoir_add_is_each_buffers_own_reservoir_add(device):
    mem = 24
    stacked_buffers, alone = _buffers(mem, device), _buffers(mem, device)
    stacked = StackedBuffers(stacked_buffers)
    for i, (x, y, task) in enumerate(_seed_batches(40, 7)):  # 280 rows into 24 slots: random replacement
        stacked.reservoir_add(x.to(device), y.to(device), task.to(device), i)
        for s, buffer in enumerate(alone):
            buffer.reservoir_add(x[s].to(device), y[s].to(device), task[s].to(device), i)
        if i == 20:  # cached logits: the stacked write must invalidate the slots it overwrites
            for buffers in (stacked_buffers, alone):
                for s, buffer in enumerate(buffers):
                    buffer.set_logits(torch.arange(mem, device=device), torch.full((mem, 4), float(s), device=device),
                                      torch.ones(4, dtype=torch.bool, device=device))
        for a, b in zip(stacked_buffers, alone):
            _assert_same_contents(a, b)
    assert all(b.seen == 280 and b.size == mem for b in stacked_buffers)
    assert all(b.logits_mask.any() and not b.logits_mask.all() for b in stacked_buffers)  # some, not all, overwritten
    assert len({tuple(b.experience.tolist()) for b in stacked_buffers}) == 3  # each buffer kept its own rows
    _assert_stacked_draws_match(stacked, alone, 10, fields=("x", "y", "task", "experience", "logits", "logits_mask"))


def test_stacked_sample_sees_writes_through_a_buffers_own_methods():
    stacked_buffers, alone = _buffers(24, policy="class_balanced"), _buffers(24, policy="class_balanced")
    stacked = StackedBuffers(stacked_buffers)
    for exp, (x, y, task) in enumerate(_seed_batches(3, 60)):
        y = y % 2 + 2 * exp  # two new classes per experience
        for buffers in (stacked_buffers, alone):
            for s, buffer in enumerate(buffers):
                plan = buffer.class_balanced_select(y[s], exp)
                buffer.class_balanced_fill(plan, x[s][plan.index], y[s][plan.index], task[s][plan.index], exp)
        _assert_stacked_draws_match(stacked, alone, 8)  # in-place writes into the stacked storage
    for width in (3, 5):  # set_logits allocates, then grows, the logits: new tensors to stack
        logits = torch.randn(3, 12, width)
        for buffers in (stacked_buffers, alone):
            for s, buffer in enumerate(buffers):
                buffer.set_logits(torch.arange(s % 2, 24, 2), logits[s], torch.ones(width, dtype=torch.bool))
        _assert_stacked_draws_match(stacked, alone, 8, fields=("x", "y", "logits", "logits_mask"))
        assert stacked.stacks["_logits"].shape == (3, 25, 5 if width == 5 else 3)


def test_stacked_draws_that_cannot_be_stacked_are_refused_in_one_line():
    buffers = [ReplayBuffer(10, seed=0), ReplayBuffer(10, seed=1)]
    labels = [torch.zeros(n, dtype=torch.long) for n in (5, 8)]
    for buffer, y in zip(buffers, labels):
        buffer.reservoir_add(torch.randn(y.shape[0], 2), y, y)
    stacked = StackedBuffers(buffers)
    assert stacked.sample(5)["x"].shape == (2, 5, 2)  # enough rows in each
    with pytest.raises(ValueError, match=r"hold \[5, 8\] samples, too few for one replay batch of 6"):
        stacked.sample(6)


def test_stacked_reservoir_add_with_logits_in_some_buffers_matches_each_buffer_alone():
    stacked_buffers = [ReplayBuffer(4, seed=0), ReplayBuffer(4, seed=1)]
    alone = [ReplayBuffer(4, seed=0), ReplayBuffer(4, seed=1)]
    stacked = StackedBuffers(stacked_buffers)
    batches = [torch.arange(8.0).view(2, 4, 1), torch.arange(100.0, 140.0).view(2, 20, 1)]
    for i, x in enumerate(batches):
        y = torch.zeros(x.shape[:2], dtype=torch.long)
        stacked.reservoir_add(x, y, y)
        for s, buffer in enumerate(alone):
            buffer.reservoir_add(x[s], y[s], y[s])
        if i == 0:  # logits cached in the first buffer only
            for buffer in (stacked_buffers[0], alone[0]):
                buffer.set_logits(torch.arange(4), torch.randn(4, 3), torch.ones(3, dtype=torch.bool))
    assert torch.equal(stacked_buffers[0].logits_mask, alone[0].logits_mask)
    assert not alone[0].logits_mask.all()  # overwritten slots lost their logits
    assert all(torch.equal(a.x, b.x) for a, b in zip(stacked_buffers, alone))
    with pytest.raises(ValueError, match=r"only some buffers hold \['logits'\]"):
        stacked.sample(2, fields=("logits",))
