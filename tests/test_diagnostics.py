import math

import pytest
import torch
from torch import nn

from ckd.benchmarking.methods import METHOD_DEFAULTS
from ckd.benchmarking.run_config import RunConfig
from ckd.benchmarking.runner import run
from ckd.distillation.diagnostics import (
    TeacherComparison,
    agreement,
    compare_with_teacher,
    distillation_report,
    expected_calibration_error,
    find_distiller,
    split_accuracy,
)
from ckd.distillation.frozen import FrozenModel
from ckd.distillation.parts.current_data import CurrentDistillationPlugin
from ckd.distillation.plugin import KDReplayPlugin

REPORT_KEYS = {"agreement", "kl", "teacher_accuracy", "teacher_correct_accuracy", "teacher_wrong_accuracy",
               "ece_student", "ece_teacher"}


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


def test_comparison_cuts_the_student_to_the_teachers_width_and_reports_all_batches():
    torch.manual_seed(0)
    old = nn.Linear(4, 3)
    teacher = FrozenModel(old, torch.ones(1, 3, dtype=torch.bool))
    grown = nn.Linear(4, 5)  # the student's head grew by two classes since the teacher was frozen
    with torch.no_grad():
        grown.weight[:3], grown.bias[:3] = old.weight, old.bias
    x, task, y = torch.randn(30, 4), torch.zeros(30, dtype=torch.long), torch.randint(0, 3, (30,))
    comparison = TeacherComparison(teacher, 2.0)
    assert comparison.report() is None
    for rows in (slice(0, 7), slice(7, 30)):
        comparison.add(grown(x[rows]), x[rows], task[rows], y[rows])
    report = comparison.report()
    assert report == pytest.approx(distillation_report(old(x).detach(), old(x).detach(), y, 2.0), abs=1e-6)
    assert report["agreement"] == 1.0 and report["kl"] == pytest.approx(0.0, abs=1e-6)
    grown.train()
    assert compare_with_teacher(grown, teacher, x, task, y, 2.0, batch_size=8) == pytest.approx(report, abs=1e-6)
    assert grown.training  # left as it was


def test_both_distillation_plugins_show_their_teacher_the_same_way():
    kd = KDReplayPlugin(temperature=3.0)
    own, shared = CurrentDistillationPlugin(temperature=5.0), CurrentDistillationPlugin(kd=kd)
    assert find_distiller([object(), own, kd]) is own and find_distiller([kd, shared]) is kd
    assert find_distiller([object()]) is None
    assert (kd.temperature, own.temperature) == (3.0, 5.0)
    assert kd.teacher is None and own.teacher is None  # nothing trained yet


# kd-replay-cached keeps the snapshot's logits on the buffer rows, not a model to compare with.
TEACHER_METHODS = sorted(m for m in METHOD_DEFAULTS if m.startswith("kd-") and m != "kd-replay-cached")


@pytest.mark.parametrize("method", TEACHER_METHODS)
def test_every_method_with_a_teacher_records_diagnostics(method):
    config = RunConfig("split-digits", method, epochs=1, n_experiences=2, max_train_per_experience=60,
                       max_test_per_experience=60)
    records = run(config)["diagnostics"]
    assert len(records) == 2 and records[0] is None  # no teacher while the first experience trains
    assert REPORT_KEYS <= set(records[1])
    assert 0.0 <= records[1]["agreement"] <= 1.0 and records[1]["kl"] >= 0.0
    if "mem_size" in METHOD_DEFAULTS[method]:
        assert {"buffer_agreement", "buffer_kl"} <= set(records[1])
