"""Tests for ``ckd.evaluation.DistillationMetrics`` as a user's own Avalanche script uses it."""

import pytest
from avalanche.evaluation.metrics import accuracy_metrics

import user_scripts
from ckd.current_data import CurrentDistillationPlugin
from ckd.evaluation import DistillationMetrics
from ckd.plugins import KDReplayPlugin


def _reported(metrics: dict) -> list[str]:
    """The evaluation experiences with a distillation report, as ``ExpNNN``."""
    return sorted(name.rsplit("/", 1)[1] for name in metrics if name.startswith("Distillation_agreement/"))


@pytest.mark.parametrize("distiller", [KDReplayPlugin(mem_size=50, replay_batch_size=8), CurrentDistillationPlugin()])
def test_reports_only_the_experiences_the_teacher_learned(distiller):
    benchmark = user_scripts.three_experiences()
    strategy = user_scripts.naive(user_scripts.net(), [distiller],
                                  (accuracy_metrics(experience=True), DistillationMetrics(distiller)))
    expected = [[], ["Exp000"], ["Exp000", "Exp001"]]
    for experience, reported in zip(benchmark.train_stream, expected):
        strategy.train(experience)
        metrics = strategy.eval(benchmark.test_stream)
        assert _reported(metrics) == reported
        for exp in reported:
            assert 0.0 <= metrics[f"Distillation_agreement/eval_phase/test_stream/{exp}"] <= 1.0


def test_refuses_what_it_cannot_report():
    with pytest.raises(ValueError, match="DistillationMetrics needs the distillation plugin whose teacher it reports"):
        DistillationMetrics(None)
    kd = KDReplayPlugin(mem_size=50)
    strategy = user_scripts.naive(user_scripts.net(), [], (DistillationMetrics(kd),))  # kd left out of plugins
    with pytest.raises(ValueError, match="a KDReplayPlugin that is not among the strategy's plugins"):
        strategy.train(user_scripts.three_experiences().train_stream[0])
