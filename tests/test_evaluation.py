"""Tests for ``ckd.distillation.parts.distillation_metrics``'s metrics as a user's own Avalanche script uses them."""

import re
from collections import defaultdict

import pytest
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics

import user_scripts
from ckd.distillation.parts.current_data import CurrentDistillationPlugin
from ckd.distillation.parts.distillation_metrics import DistillationLossMetric, DistillationMetrics
from ckd.distillation.plugin import KDReplayPlugin


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


class _RecordTerms(SupervisedPlugin):
    """The distillation term the KD plugin added at each step, by (experience, epoch); ``None``: none."""

    def __init__(self, kd):
        super().__init__()
        self.kd = kd
        self.terms = defaultdict(list)

    def after_training_iteration(self, strategy, **kwargs):
        term = self.kd.kd_loss
        key = (strategy.clock.train_exp_counter, strategy.clock.train_exp_epochs)
        self.terms[key].append(None if term is None else float(term))


def _mean(terms):
    return sum(terms) / len(terms)


@pytest.mark.parametrize("teacher", ["snapshot", "trained model"])
def test_the_distillation_loss_is_the_mean_of_the_steps_that_distilled(teacher):
    # "trained model": a frozen teacher from the first step, which distils once the buffer holds samples.
    kd = KDReplayPlugin(mem_size=100, replay_batch_size=16, alpha=0.5, temperature=2.0,
                        teacher=user_scripts.digits_mlp(seed=1) if teacher == "trained model" else None)
    record = _RecordTerms(kd)
    strategy = user_scripts.naive(user_scripts.digits_mlp(), [kd, record], (DistillationLossMetric(kd),), epochs=2)
    for experience in user_scripts.split_digits().train_stream[:3]:
        strategy.train(experience)
    reported = strategy.evaluator.get_all_metrics()
    epochs = {key: [t for t in terms if t is not None] for key, terms in sorted(record.terms.items())}
    expected_epochs = [_mean(terms) for terms in epochs.values() if terms]
    expected_experiences = [_mean([t for (e, _), terms in epochs.items() if e == exp for t in terms])
                            for exp in range(3) if any(epochs[exp, epoch] for epoch in range(2))]
    assert reported["KD_Loss_Epoch/train_phase/train_stream"][1] == pytest.approx(expected_epochs, rel=1e-5)
    assert reported["KD_Loss_Exp/train_phase/train_stream"][1] == pytest.approx(expected_experiences, rel=1e-5)
    first = record.terms[0, 0]
    if teacher == "snapshot":  # no teacher yet: nothing reported for the first experience
        assert set(first + record.terms[0, 1]) == {None} and len(expected_epochs) == 4
    else:  # the first step, with an empty buffer, is left out of the mean rather than counted as 0
        assert first[0] is None and None not in first[1:] and len(expected_epochs) == 6
    assert min(expected_epochs) > 0


def test_the_distillation_loss_metric_refuses_what_it_cannot_report():
    with pytest.raises(ValueError, match="DistillationLossMetric needs the KDReplayPlugin whose loss it reports, got "
                                         "CurrentDistillationPlugin"):
        DistillationLossMetric(CurrentDistillationPlugin())
    kd = KDReplayPlugin(mem_size=50)
    strategy = user_scripts.naive(user_scripts.digits_mlp(), [], (DistillationLossMetric(kd),))  # kd left out
    message = ("DistillationLossMetric reads a KDReplayPlugin that is not among the strategy's plugins (it would never "
               "run): pass that same KDReplayPlugin object in plugins=[...]")
    with pytest.raises(ValueError, match=re.escape(message)):
        strategy.train(user_scripts.split_digits().train_stream[0])
