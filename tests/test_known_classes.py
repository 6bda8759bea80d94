import pytest
import torch

from ckd.distillation.buffer import ReplayBuffer
from ckd.distillation.known_classes import ClassMasks, grow_seen_classes, only_taught
from ckd.distillation.losses import soft_kl, summed_soft_kl


def test_the_seen_table_grows_in_tasks_and_classes_and_keeps_what_it_had():
    seen = grow_seen_classes(torch.zeros(0, 0, dtype=torch.bool), 0, [0, 1])
    assert seen.tolist() == [[True, True]]
    grown = grow_seen_classes(seen, 1, [3])
    assert grown.tolist() == [[True, True, False, False], [False, False, False, True]]
    assert seen.tolist() == [[True, True]]  # a new table
    assert torch.equal(grow_seen_classes(grown, 0, []), grown)


def test_class_masks_index_each_rows_task_and_unseen_tasks_get_none():
    masks = ClassMasks(torch.tensor([[True, False, True], [False, True, False]]))
    task = torch.tensor([[0, 1], [5, 0]])  # leading seed dimension
    known = masks(task, 4, known_only=True)
    assert known.shape == (2, 2, 4)
    assert known.tolist() == [[[True, False, True, False], [False, True, False, False]],
                              [[False] * 4, [True, False, True, False]]]
    every = masks(task, 2, known_only=False)
    assert every.tolist() == [[[True, True], [True, True]], [[False, False], [True, True]]]
    assert masks.table(4, task.device, True) is masks.table(4, task.device, True)  # built once


def test_only_taught_keeps_the_rows_of_finished_experiences():
    logits = torch.zeros(2, 3, 2)
    experience = torch.tensor([[0, 1, 2], [2, 0, 1]])
    taught = only_taught(None, experience, 1, logits)
    assert taught.tolist() == [[[True, True], [True, True], [False, False]],
                               [[False, False], [True, True], [True, True]]]
    mask = torch.tensor([[True, False]]).expand(2, 3, 2)
    assert torch.equal(only_taught(mask, experience, 1, logits), taught & mask)


@pytest.mark.parametrize("masked", [False, True])
def test_summed_soft_kl_is_the_seeds_soft_kl_terms_summed(masked):
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 5, 6), torch.randn(3, 5, 4) * 2  # a head that grew by two classes
    mask = torch.rand(3, 5, 4) > 0.3 if masked else None
    expected = sum(soft_kl(student[s], teacher[s], 2.0, None if mask is None else mask[s]) for s in range(3))
    assert summed_soft_kl(student, teacher, 2.0, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"\(S, R, C\)"):
        summed_soft_kl(student[0], teacher[0], 2.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        summed_soft_kl(student, teacher, 0.0)


def test_class_balanced_refill_is_select_then_fill_with_the_rows_loaded():
    x, y = torch.arange(60.0).unsqueeze(1), torch.arange(60) % 3
    t = torch.zeros(60, dtype=torch.long)
    whole, parts = ReplayBuffer(12, "class_balanced", seed=0), ReplayBuffer(12, "class_balanced", seed=0)
    loaded = []
    whole.class_balanced_refill(y, 0, lambda index: loaded.append(index) or (x[index], y[index], t[index]))
    plan = parts.class_balanced_select(y, 0)
    parts.class_balanced_fill(plan, x[plan.index], y[plan.index], t[plan.index], 0)
    assert torch.equal(loaded[0], plan.index) and torch.equal(whole.x, parts.x)
    assert torch.bincount(whole.y).tolist() == [4, 4, 4]
    before = whole.x.clone()
    whole.class_balanced_refill(y[:0], 1, lambda index: pytest.fail("nothing to load"))  # nothing new to keep
    assert torch.equal(whole.x, before)


def test_cache_logits_writes_every_slot_or_only_the_new_ones():
    buf = ReplayBuffer(6, "reservoir", seed=0)
    zeros = torch.zeros(4, dtype=torch.long)
    buf.reservoir_add(torch.arange(4.0).unsqueeze(1), zeros, zeros)
    calls = []

    def logits_of(rows):
        calls.append(rows.index.tolist())
        return rows.x.repeat(1, 2), None

    buf.cache_logits(logits_of, batch_size=3)
    assert calls == [[0, 1, 2], [3]] and torch.equal(buf.logits, buf.x.repeat(1, 2)) and bool(buf.logits_mask.all())
    buf.reservoir_add(torch.tensor([[9.0]]), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    buf.cache_logits(logits_of, only_new=True)
    assert calls[-1] == [4] and buf.logits[4].tolist() == [9.0, 9.0]
