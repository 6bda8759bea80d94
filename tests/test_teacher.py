import torch
from torch import nn

from ckd.teacher import Teacher


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
