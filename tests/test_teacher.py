import math

import pytest
import torch
from torch import nn

from ckd.teacher import Teacher, TeacherSet


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))


def test_teacher_is_a_frozen_eval_copy():
    student = _model()
    teacher = Teacher(student, torch.ones(1, 3, dtype=torch.bool))
    assert not teacher.model.training
    assert all(not p.requires_grad for p in teacher.model.parameters())
    before = [p.clone() for p in teacher.model.parameters()]

    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    for _ in range(5):
        x = torch.randn(16, 4)
        logits, _ = teacher.logits(x, torch.zeros(16, dtype=torch.long))
        loss = nn.functional.cross_entropy(student(x), torch.randint(0, 3, (16,))) + (logits * student(x)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.model.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_teacher_outputs_are_deterministic_and_usable_as_targets():
    teacher = Teacher(_model(), torch.ones(1, 3, dtype=torch.bool))
    x = torch.randn(10, 4)
    a, _ = teacher.logits(x, torch.zeros(10, dtype=torch.long))
    b, _ = teacher.logits(x, torch.zeros(10, dtype=torch.long))
    assert torch.equal(a, b)  # eval mode: dropout off
    assert not a.is_inference() and not a.requires_grad


def test_class_mask_follows_each_samples_task():
    known = torch.tensor([[True, True, False, False], [False, False, True, True]])
    teacher = Teacher(_model(), known)
    mask = teacher.class_mask(torch.tensor([1, 0, 2]), 6)
    assert mask.tolist() == [
        [False, False, True, True, False, False],
        [True, True, False, False, False, False],
        [False] * 6,  # a task the teacher never saw
    ]


def test_all_outputs_mode_targets_every_class_of_seen_tasks():
    known = torch.tensor([[True, True, False]])
    teacher = Teacher(_model(), known, known_classes_only=False)
    logits, mask = teacher.logits(torch.randn(4, 4), torch.zeros(4, dtype=torch.long))
    assert mask is None and logits.shape == (4, 3)
    assert teacher.class_mask(torch.tensor([0, 1]), 3).tolist() == [[True] * 3, [False] * 3]


def _constant(bias):
    """A model whose logits are ``bias`` whatever the input."""
    layer = nn.Linear(4, len(bias))
    nn.init.zeros_(layer.weight)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor(bias))
    return layer


def _two_teachers(size=2):
    teachers = TeacherSet(size)
    # After experience 0 (classes 0, 1) the head had 2 outputs; after experience 1 (class 2), 3.
    teachers.add(Teacher(_constant([1.0, 0.0]), torch.tensor([[True, True]])), experience=0)
    teachers.add(Teacher(_constant([0.0, 2.0, 1.0]), torch.ones(1, 3, dtype=torch.bool)), experience=1)
    return teachers


def _softmax(values, t):
    e = [math.exp(v / t) for v in values]
    return [v / sum(e) for v in e]


def test_own_teacher_is_the_one_that_finished_each_samples_experience():
    teachers = _two_teachers()
    experience = torch.tensor([0, 1, 2, 0])  # 2: the experience being learned
    logits, mask = teachers.soft_targets(torch.randn(4, 4), torch.zeros(4, dtype=torch.long), experience, 2.0, "own")
    assert torch.allclose(logits[0], torch.tensor([1.0, 0.0, 0.0]))  # padded past the old head
    assert mask[0].tolist() == [True, True, False]
    for row in (1, 2):
        assert torch.allclose(logits[row], torch.tensor([0.0, 2.0, 1.0]))
        assert mask[row].tolist() == [True, True, True]
    assert torch.equal(logits[3], logits[0])


def test_average_ensemble_is_the_mean_of_the_softened_probabilities_of_the_teachers_that_saw_the_sample():
    t = 2.0
    teachers = _two_teachers()
    experience = torch.tensor([0, 1, 2])
    logits, mask = teachers.soft_targets(torch.randn(3, 4), torch.zeros(3, dtype=torch.long), experience, t, "average")
    assert mask.all()
    old, new = _softmax([1.0, 0.0], t) + [0.0], _softmax([0.0, 2.0, 1.0], t)
    expected = [[(a + b) / 2 for a, b in zip(old, new)], new, new]
    probs = torch.softmax(logits / t, dim=1)
    assert torch.allclose(probs, torch.tensor(expected), atol=1e-6)


def test_teacher_set_keeps_the_last_snapshots():
    teachers = _two_teachers(size=2)
    teachers.add(Teacher(_constant([0.0, 0.0, 3.0]), torch.ones(1, 3, dtype=torch.bool)), experience=2)
    assert teachers.experiences == [1, 2] and len(teachers) == 2
    # A sample of experience 0 whose teacher was dropped gets the oldest one kept.
    logits, _ = teachers.soft_targets(torch.randn(1, 4), torch.zeros(1, dtype=torch.long), torch.tensor([0]), 1.0)
    assert torch.allclose(logits[0], torch.tensor([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="n_teachers must be an integer >= 1, got 0"):
        TeacherSet(0)
    with pytest.raises(RuntimeError, match="no teacher yet"):
        TeacherSet(1).soft_targets(torch.randn(1, 4), torch.zeros(1, dtype=torch.long), torch.tensor([0]), 1.0)
