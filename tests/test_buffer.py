import pickle

import pytest
import torch

from ckd.buffer import ReplayBuffer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _stream_batch(start: int, n: int):
    idx = torch.arange(start, start + n)
    x = idx.float().unsqueeze(1).repeat(1, 3)  # each sample remembers its stream position
    return x, idx % 10, torch.zeros(n, dtype=torch.long)


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
