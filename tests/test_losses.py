import math

import pytest
import torch

from ckd.distillation.losses import (
    asymmetric_logits,
    average_soft_targets,
    feature_distance,
    rkd_angle,
    rkd_distance,
    soft_kl,
    soft_kl_sum,
)


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def _softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_soft_kl_matches_hand_computed_value_at_t1():
    # p_t = softmax([ln 3, 0]) = [3/4, 1/4], p_s = [1/2, 1/2]
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120...
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert soft_kl(student, teacher, 1.0).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.1308120, abs=1e-6)


def test_soft_kl_temperature_and_t_squared_factor():
    # T = 2: p_t = softmax([ln3/2, 0]) = [√3/(1+√3), 1/(1+√3)], p_s uniform; loss = 4·KL.
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    r3 = math.sqrt(3.0)
    p_t = [r3 / (1 + r3), 1 / (1 + r3)]
    expected = 4.0 * _kl(p_t, [0.5, 0.5])
    assert expected == pytest.approx(0.145363, abs=1e-5)
    assert soft_kl(student, teacher, 2.0).item() == pytest.approx(expected, abs=1e-6)


def test_soft_kl_is_batch_mean_over_rows():
    student = torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0, 0.0], [3.0, 0.0, -1.0]])
    rows = [
        _kl(_softmax([v / 3 for v in t]), _softmax([v / 3 for v in s]))
        for s, t in zip(student.tolist(), teacher.tolist())
    ]
    expected = 9.0 * sum(rows) / 2
    assert soft_kl(student, teacher, 3.0).item() == pytest.approx(expected, rel=1e-5)


def test_soft_kl_is_zero_for_equal_logits():
    z = torch.randn(8, 10)
    assert soft_kl(z, z.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 5.0])
def test_soft_kl_gradient_is_t_times_prob_difference_over_batch(temperature):
    torch.manual_seed(0)
    b, c_s, c_t = 4, 7, 5
    student = torch.randn(b, c_s, requires_grad=True)
    teacher = torch.randn(b, c_t)
    known = torch.tensor([True, True, False, True, True])
    soft_kl(student, teacher, temperature, known).backward()

    neg = torch.full((b, c_t), -1e30)
    p_s = torch.softmax(torch.where(known, student.detach()[:, :c_t] / temperature, neg), 1)
    p_t = torch.softmax(torch.where(known, teacher / temperature, neg), 1)
    expected = torch.zeros(b, c_s)
    expected[:, :c_t] = temperature * (p_s - p_t) / b
    expected[:, :c_t][:, ~known] = 0.0
    torch.testing.assert_close(student.grad, expected, atol=1e-6, rtol=1e-5)
    assert torch.all(student.grad[:, c_t:] == 0)
    assert torch.all(student.grad[:, 2] == 0)


def test_soft_kl_restricts_to_known_classes_per_sample():
    student = torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0, -5.0], [9.0, 0.0, 0.0]])
    known = torch.tensor([[True, True, False], [False, False, False]])
    # Row 0 reduces to the 2-class case; row 1 has nothing known and adds 0.
    expected = (0.75 * math.log(1.5) + 0.25 * math.log(0.5)) / 2
    assert soft_kl(student, teacher, 1.0, known).item() == pytest.approx(expected, abs=1e-6)


def test_soft_kl_teacher_with_fewer_classes_ignores_new_student_outputs():
    teacher = torch.randn(3, 4)
    student = torch.cat([teacher, torch.randn(3, 6) * 10], dim=1)
    assert soft_kl(student, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_kl_rejects_bad_input():
    z = torch.randn(2, 3)
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        soft_kl(z, z, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        soft_kl(z, z, -1.0)
    with pytest.raises(ValueError, match="student has 3 outputs but the teacher has 5"):
        soft_kl(z, torch.randn(2, 5), 1.0)
    with pytest.raises(ValueError, match="batch sizes differ"):
        soft_kl(z, torch.randn(4, 3), 1.0)


def test_feature_distance_values():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    assert feature_distance(s, t, "l2").item() == pytest.approx((1 + 4) / 4)
    t2 = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    # cos = 1 for row 0, 0 for row 1 -> mean(1 - cos) = 0.5
    assert feature_distance(s, t2, "cosine").item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="metric"):
        feature_distance(s, t, "l1")


def test_rkd_losses_vanish_for_rotated_scaled_translated_embeddings():
    torch.manual_seed(0)
    emb = torch.randn(6, 4)
    q, _ = torch.linalg.qr(torch.randn(4, 4))
    moved = 3.0 * emb @ q + 1.5
    assert rkd_distance(moved, emb).item() == pytest.approx(0.0, abs=1e-6)
    assert rkd_angle(moved, emb).item() == pytest.approx(0.0, abs=1e-6)
    assert rkd_distance(torch.randn(6, 4), emb).item() > 1e-3
    assert rkd_angle(torch.randn(6, 4), emb).item() > 1e-3


def test_rkd_distance_hand_computed():
    # Student: 3 collinear points 0, 1, 3 -> distances 1, 3, 2 (mean 2) -> 0.5, 1.5, 1.
    # Teacher: equilateral, all distances equal -> normalised 1, 1, 1.
    # Off-diagonal pairs appear twice; Huber(0.5) = 0.125, Huber(0.5) = 0.125, Huber(0) = 0 -> mean 1/12.
    student = torch.tensor([[0.0], [1.0], [3.0]])
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert rkd_distance(student, teacher).item() == pytest.approx(0.25 / 3, abs=1e-6)


@pytest.mark.parametrize("batch", [5, 40])  # 40 > 25: cdist switches to its matrix-product form
def test_rkd_distance_weights_the_off_diagonal_like_selecting_it(batch):
    # The loss weights the diagonal by 0 instead of selecting the off-diagonal with a
    # boolean mask (a host sync); value and gradient are those of the selection.
    torch.manual_seed(2)
    s = torch.randn(batch, 8, requires_grad=True)
    t = torch.randn(batch, 8)
    off = ~torch.eye(batch, dtype=torch.bool)

    def normalised(e):
        d = torch.cdist(e, e)
        return d / d[off].mean()

    reference = torch.nn.functional.smooth_l1_loss(normalised(s)[off], normalised(t)[off])
    (grad_ref,) = torch.autograd.grad(reference, s)
    loss = rkd_distance(s, t)
    (grad,) = torch.autograd.grad(loss, s)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert torch.allclose(grad, grad_ref, rtol=1e-4, atol=1e-7)


def test_soft_kl_without_mask_equals_all_true_mask():
    torch.manual_seed(1)
    s, t = torch.randn(5, 6), torch.randn(5, 6)
    full = soft_kl(s, t, 3.0)
    masked = soft_kl(s, t, 3.0, torch.ones(6, dtype=torch.bool))
    assert full.item() == pytest.approx(masked.item(), rel=1e-6)


def test_average_soft_targets_by_hand():
    t = 2.0
    # Two teachers, one sample; the first knows classes 0 and 1 only.
    logits = torch.tensor([[[2.0, 0.0, 9.0]], [[0.0, 2.0, 4.0]]])
    masks = torch.tensor([[[True, True, False]], [[True, True, True]]])
    weights = torch.tensor([[0.25, 0.75]])
    z0 = [math.exp(1.0), 1.0]
    z1 = [1.0, math.exp(1.0), math.exp(2.0)]
    p0 = [z0[0] / sum(z0), z0[1] / sum(z0), 0.0]
    p1 = [v / sum(z1) for v in z1]
    mean = [0.25 * a + 0.75 * b for a, b in zip(p0, p1)]
    out = average_soft_targets(logits, weights, t, masks)
    assert torch.allclose(out, t * torch.tensor([mean]).log(), atol=1e-6)
    # Fed to soft_kl it is the KL from the mean distribution.
    student = torch.tensor([[0.5, -1.0, 1.0]])
    p_s = torch.softmax(student / t, dim=1)[0].tolist()
    kl = sum(m * math.log(m / s) for m, s in zip(mean, p_s))
    assert soft_kl(student, out, t).item() == pytest.approx(t * t * kl, rel=1e-5)
    with pytest.raises(ValueError, match=r"weights must be \(B, K\)"):
        average_soft_targets(logits, torch.ones(1, 3) / 3, t, masks)


@pytest.mark.parametrize("masked", [False, True], ids=["all-known", "masked"])
def test_soft_kl_sum_over_seeds_is_the_seeds_soft_kl_summed(masked):
    torch.manual_seed(3)
    seeds, rows, classes, temperature = 3, 6, 5, 2.0
    student = torch.randn(seeds, rows, classes, requires_grad=True)
    teacher = torch.randn(seeds, rows, classes) * 3
    mask = None
    if masked:
        mask = torch.rand(seeds, rows, classes) > 0.3
        mask[0, 1] = False  # no known class: adds 0
        mask[1, 2] = torch.tensor([False, False, True, False, False])  # a single known class: KL 0
        mask[2, 0] = True
    batched = soft_kl_sum(student, teacher, temperature, mask) * temperature**2 / rows
    (grad_batched,) = torch.autograd.grad(batched, student)
    per_seed = sum(soft_kl(student[s], teacher[s], temperature, None if mask is None else mask[s]) for s in range(seeds))
    (grad_per_seed,) = torch.autograd.grad(per_seed, student)
    # One sum over all rows rounds differently from a sum of per-seed sums: the values agree
    # to float32 rounding only. The gradients take the same element-wise steps: bit for bit.
    assert batched.item() == pytest.approx(per_seed.item(), rel=1e-6)
    assert torch.equal(grad_batched, grad_per_seed)
    assert torch.isfinite(grad_batched).all() and batched.item() > 0
    if masked:
        assert torch.all(grad_batched[0, 1] == 0) and torch.all(grad_batched[1, 2] == 0)
        assert torch.all(grad_batched[~mask] == 0)


def test_soft_kl_of_a_wider_student_is_taken_on_the_teachers_columns():
    temperature = 2.0
    student = torch.tensor([[0.5, -1.0, 2.0, 7.0, -3.0], [1.0, 0.0, -0.5, -9.0, 4.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0, 0.0], [-2.0, 3.0, 1.0]])
    rows = [
        _kl(_softmax([v / temperature for v in t]), _softmax([v / temperature for v in s[:3]]))
        for s, t in zip(student.tolist(), teacher.tolist())
    ]
    loss = soft_kl(student, teacher, temperature)
    assert loss.item() == pytest.approx(temperature**2 * sum(rows) / 2, rel=1e-6)
    loss.backward()
    p_s = torch.softmax(student.detach()[:, :3] / temperature, dim=1)
    p_t = torch.softmax(teacher / temperature, dim=1)
    torch.testing.assert_close(student.grad[:, :3], temperature * (p_s - p_t) / 2, atol=1e-7, rtol=1e-5)
    assert torch.all(student.grad[:, 3:] == 0)


def test_asymmetric_logits_leave_out_the_met_classes_the_batch_does_not_hold():
    # Met so far: classes 0, 1, 2; the batch holds 1 and 2; class 3 was never met.
    logits = torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.5, 0.0, 3.0, 1.0]])
    targets = torch.tensor([1, 2])
    seen = torch.tensor([True, True, True, False])
    masked = asymmetric_logits(logits, targets, seen)
    assert torch.equal(masked[:, 1:], logits[:, 1:])
    assert bool((masked[:, 0] < -1e30).all())
    # CE over {1, 2, 3}: row 0 = -2 + ln(e^2 + e^0 + e^-1), row 1 = -3 + ln(e^0 + e^3 + e^1)
    expected = (-2 + math.log(math.exp(2) + 1 + math.exp(-1)) - 3 + math.log(1 + math.exp(3) + math.e)) / 2
    assert float(torch.nn.functional.cross_entropy(masked, targets)) == pytest.approx(expected)
    # nothing met before the batch's own classes: unchanged
    assert torch.equal(asymmetric_logits(logits, targets, torch.tensor([False, True, True, False])), logits)
