import math

import pytest
import torch

from ckd.diagnostics import agreement, distillation_report, expected_calibration_error, split_accuracy


def test_agreement_and_split_accuracy_on_hand_made_logits():
    # Teacher predicts 0, 1, 1, 0; student predicts 0, 1, 0, 1; targets 0, 1, 0, 0.
    teacher = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [2.0, 0.0]])
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 1, 0, 0])
    assert agreement(student, teacher) == pytest.approx(0.5)
    # Teacher right on samples 0, 1, 3 -> student right on 0, 1 -> 2/3; teacher wrong on 2 -> student right -> 1.
    right, wrong = split_accuracy(student, teacher, targets)
    assert right == pytest.approx(2 / 3) and wrong == pytest.approx(1.0)
    _, none_wrong = split_accuracy(student, teacher, teacher.argmax(1))
    assert math.isnan(none_wrong)


def test_expected_calibration_error_by_hand():
    # Two samples with confidence 0.8 (bin 12 of 15): one right, one wrong -> |0.5 - 0.8| · 2/2 = 0.3.
    p = 0.8
    logit = math.log(p / (1 - p))
    logits = torch.tensor([[logit, 0.0], [logit, 0.0]])
    assert expected_calibration_error(logits, torch.tensor([0, 1])) == pytest.approx(0.3, abs=1e-6)
    # Perfectly confident and right: ECE 0.
    assert expected_calibration_error(torch.tensor([[50.0, 0.0]]), torch.tensor([0])) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(logits, torch.tensor([0, 1]), n_bins=0)


def test_report_of_a_student_equal_to_its_teacher():
    torch.manual_seed(0)
    logits = torch.randn(50, 10)
    report = distillation_report(logits, logits.clone(), torch.randint(0, 10, (50,)), 2.0)
    assert report["agreement"] == 1.0 and report["kl"] == pytest.approx(0.0, abs=1e-6)
    assert report["ece_student"] == pytest.approx(report["ece_teacher"])
    assert report["teacher_correct_accuracy"] == 1.0 and report["teacher_wrong_accuracy"] == 0.0
