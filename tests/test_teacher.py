import math

import pytest
import torch
from torch import nn

from ckd.distillation.ema import EMAWeights, decay_for_half_life
from ckd.distillation.frozen import FrozenModel as Teacher, TeacherSet
from ckd.distillation.teachers import CachedTeacher, EMATeacher, SnapshotTeacher, make_teacher


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
    teacher = Teacher(_model(), known, known_classes_only=True)
    mask = teacher.class_mask(torch.tensor([1, 0, 2]), 6)
    assert mask.tolist() == [
        [False, False, True, True, False, False],
        [True, True, False, False, False, False],
        [False] * 6,  # a task the teacher never saw
    ]


def test_by_default_every_output_of_a_seen_task_is_a_target():
    known = torch.tensor([[True, True, False]])
    teacher = Teacher(_model(), known)
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


def test_ema_update_matches_a_hand_computation():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.fill_(0.5)
    ema = EMAWeights(half_life=0.5)
    ema.start_experience(model, steps=4)  # half-life 2 steps: decay 0.5 ** (1/2)
    decay = 0.5 ** 0.5
    assert ema.decay == pytest.approx(decay)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, -2.0]]))
        model.bias.fill_(1.5)
    ema.update()
    # θ_e ← λ·θ_e + (1 − λ)·θ
    expected_w = [decay * 1.0 + (1 - decay) * 3.0, decay * 2.0 + (1 - decay) * -2.0]
    assert ema.model.weight[0].tolist() == pytest.approx(expected_w, rel=1e-6)
    assert float(ema.model.bias) == pytest.approx(decay * 0.5 + (1 - decay) * 1.5, rel=1e-6)
    ema.update()  # a second step moves it the same fraction again
    assert float(ema.model.bias) == pytest.approx(1.5 - decay**2 * 1.0, rel=1e-6)
    assert not ema.model.weight.requires_grad


def test_half_life_is_a_fraction_of_the_experiences_steps():
    assert decay_for_half_life(0.3, 1000) ** 300 == pytest.approx(0.5)
    assert decay_for_half_life(1.0, 50) ** 50 == pytest.approx(0.5)
    with pytest.raises(ValueError, match="half_life must be > 0"):
        EMAWeights(half_life=0)
    with pytest.raises(ValueError, match=r"update_probability must be in \(0, 1\]"):
        EMAWeights(update_probability=0.0)


def test_stochastic_ema_update_applies_each_step_with_its_probability():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMAWeights(half_life=1.0, update_probability=0.25, seed=3)
    ema.start_experience(model, steps=1)  # decay 0.5: an applied step halves the distance
    with torch.no_grad():
        model.weight.fill_(1.0)
    applied = 0
    for _ in range(2000):
        before = float(ema.model.weight)
        ema.update()
        applied += float(ema.model.weight) != before
        ema.model.weight.data.fill_(0.0)
    assert 0.2 < applied / 2000 < 0.3


def test_ema_keeps_parameters_that_match_when_the_model_grows():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    ema = EMAWeights(half_life=0.5)
    ema.start_experience(model, steps=2)
    ema.update()
    first = ema.model[0].weight.clone()
    model[1] = nn.Linear(2, 3)  # a head that grew
    ema.start_experience(model, steps=2)
    assert torch.equal(ema.model[0].weight, first)
    assert ema.model[1].weight.shape == (3, 2)


def test_ema_teacher_follows_the_student_and_gives_its_logits_after_an_experience():
    student = nn.Linear(4, 3)
    teacher = make_teacher("ema", half_life=0.5)
    assert isinstance(teacher, EMATeacher) and not teacher.ready
    teacher.before_training_exp(student, steps=2)
    with torch.no_grad():
        student.weight.add_(1.0)
    teacher.after_training_iteration(student)
    teacher.after_training_exp(student, torch.ones(1, 3, dtype=torch.bool), None)
    assert teacher.ready
    x = torch.randn(5, 4)
    sample = type("S", (), {"task": torch.zeros(5, dtype=torch.long)})()
    logits, mask = teacher.soft_targets(sample, x)
    assert mask is None
    assert torch.allclose(logits, teacher.weights.model(x))
    assert not torch.allclose(logits, student(x))


def test_snapshot_teacher_releases_the_old_copy_and_cached_teacher_keeps_no_model():
    snapshot = SnapshotTeacher()
    model = _model()
    snapshot.after_training_exp(model, torch.ones(1, 3, dtype=torch.bool), None)
    first = snapshot.model
    snapshot.after_training_exp(model, torch.ones(1, 3, dtype=torch.bool), None)
    assert snapshot.model is not first and snapshot.model.model is not model
    assert CachedTeacher().model is None and CachedTeacher().nbytes == 0
    with pytest.raises(ValueError, match="teacher must be one of"):
        make_teacher("oracle")


def test_frozen_teachers_give_no_target_to_samples_of_the_experience_being_learned():
    model = _model()
    known = torch.ones(1, 3, dtype=torch.bool)
    sample = type("S", (), {"task": torch.zeros(3, dtype=torch.long), "experience": torch.tensor([0, 1, 0])})()
    x = torch.randn(3, 4)
    for teacher in (SnapshotTeacher(), make_teacher("ensemble", n_teachers=2)):
        teacher.after_training_exp(model, known, None)  # experience 0 ended; 1 is being learned
        logits, mask = teacher.soft_targets(sample, x)
        assert mask.tolist() == [[True] * 3, [False] * 3, [True] * 3]
        assert torch.allclose(logits, model.eval()(x))  # the model has dropout: compare in eval mode
    legacy = SnapshotTeacher(current_experience_targets=True)
    legacy.after_training_exp(model, known, None)
    assert legacy.soft_targets(sample, x)[1] is None  # every sample, every output
