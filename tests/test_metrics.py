import numpy as np
import pytest

from ckd.reports.metrics import (
    accuracy_matrix,
    average_forgetting,
    average_forgetting_avalanche,
    backward_transfer,
    compute_metrics,
    final_average_accuracy,
)

# Accuracy only ever falls after training: both forgetting definitions agree.
DECAYING = [
    [0.9, 0.0, 0.0],
    [0.6, 0.8, 0.0],
    [0.5, 0.7, 0.9],
]

# Experience 0 rises after training (0.6 -> 0.8) before it falls to 0.5, so
# best-ever (0.8) and right-after-training (0.6) differ.
RISING = [
    [0.6, 0.0, 0.0],
    [0.8, 0.7, 0.0],
    [0.5, 0.4, 0.9],
]


def test_final_average_accuracy_is_mean_of_last_row():
    # (0.5 + 0.7 + 0.9) / 3 = 0.7
    assert final_average_accuracy(DECAYING) == pytest.approx(0.7)


def test_forgetting_definitions_agree_when_accuracy_only_falls():
    # best-ever: ((0.9 - 0.5) + (0.8 - 0.7)) / 2 = 0.25
    assert average_forgetting(DECAYING) == pytest.approx(0.25)
    # right after training: ((0.9 - 0.5) + (0.8 - 0.7)) / 2 = 0.25
    assert average_forgetting_avalanche(DECAYING) == pytest.approx(0.25)
    # BWT: ((0.5 - 0.9) + (0.7 - 0.8)) / 2 = -0.25
    assert backward_transfer(DECAYING) == pytest.approx(-0.25)


def test_forgetting_definitions_differ_when_accuracy_rises_after_training():
    # best-ever: ((max(0.6, 0.8) - 0.5) + (0.7 - 0.4)) / 2 = (0.3 + 0.3) / 2 = 0.3
    assert average_forgetting(RISING) == pytest.approx(0.3)
    # right after training: ((0.6 - 0.5) + (0.7 - 0.4)) / 2 = (0.1 + 0.3) / 2 = 0.2
    assert average_forgetting_avalanche(RISING) == pytest.approx(0.2)
    # BWT: ((0.5 - 0.6) + (0.4 - 0.7)) / 2 = -0.2
    assert backward_transfer(RISING) == pytest.approx(-0.2)
    # ACC: (0.5 + 0.4 + 0.9) / 3 = 0.6
    assert final_average_accuracy(RISING) == pytest.approx(0.6)


def test_best_ever_excludes_the_final_row():
    # Experience 0 ends at its highest value: best-ever over rows 0..T-2 is 0.5,
    # so forgetting is ((0.5 - 0.7) + (0.6 - 0.6)) / 2 = -0.1.
    R = [[0.5, 0.0, 0.0], [0.4, 0.6, 0.0], [0.7, 0.6, 0.8]]
    assert average_forgetting(R) == pytest.approx(-0.1)


def test_single_experience_has_no_forgetting():
    R = [[0.83]]
    assert final_average_accuracy(R) == pytest.approx(0.83)
    assert average_forgetting(R) == 0.0
    assert average_forgetting_avalanche(R) == 0.0
    assert backward_transfer(R) == 0.0


def test_compute_metrics_keys_and_values_accept_arrays():
    metrics = compute_metrics(np.array(RISING))
    assert metrics == pytest.approx(
        {
            "final_average_accuracy": 0.6,
            "average_forgetting": 0.3,
            "average_forgetting_avalanche": 0.2,
            "bwt": -0.2,
        }
    )
    assert all(type(v) is float for v in metrics.values())


@pytest.mark.parametrize(
    ("R", "message"),
    [
        ([], "at least 1 row"),
        ([[0.5, 0.5]], "square"),
        ([[0.5, 0.5], [0.5]], "square table"),
        ([0.5, 0.5], "2-D"),
        ([[0.5, 0.0], [1.2, 0.9]], r"R\[1\]\[0\] = 1.2"),
        ([[-0.1]], r"R\[0\]\[0\] = -0.1"),
        ([[float("nan")]], "nan"),
    ],
)
def test_invalid_matrices_are_rejected_with_the_problem_named(R, message):
    with pytest.raises(ValueError, match=message):
        accuracy_matrix(R)
    with pytest.raises(ValueError, match=message):
        compute_metrics(R)
