"""EMAEvaluationPlugin in users' scripts: growing and multi-head models evaluated on the
whole test stream, evaluations that raise, and a plugin reused for a second run."""

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.models import IncrementalClassifier, MTSimpleMLP
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin
from torch import nn

from ckd.data.streams import make_stream
from ckd.distillation.parts.weight_averaging import EMAEvaluationPlugin, evaluation_model


def _model_and_benchmark(kind: str):
    torch.manual_seed(0)
    if kind == "incremental":
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), IncrementalClassifier(32, initial_out_features=2))
        return model, make_stream("split-digits", seed=0, max_train_per_experience=100).benchmark
    model = MTSimpleMLP(input_size=64, hidden_size=32)
    return model, make_stream("split-digits", seed=0, task_labels=True, max_train_per_experience=100).benchmark


def _naive(model, plugins):
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=10, train_epochs=1,
                 eval_mb_size=100, plugins=plugins,
                 evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))


class _Seen(SupervisedPlugin):
    """The model each evaluated experience ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.models = []

    def after_eval_exp(self, strategy, **kwargs) -> None:
        self.models.append(strategy.model)


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["incremental", "multi-head"])
def test_a_growing_or_multi_head_model_evaluated_on_the_whole_test_stream(kind):
    model, benchmark = _model_and_benchmark(kind)
    ema, seen = EMAEvaluationPlugin(), _Seen()
    strategy = _naive(model, [ema, seen])
    for experience in benchmark.train_stream:
        strategy.train(experience)
        trained, average, averaged = _state(model), ema.model, _state(ema.model)
        seen.models.clear()
        strategy.eval(benchmark.test_stream)  # Avalanche adapts the evaluated model to every experience
        assert seen.models and all(m is average for m in seen.models)  # scored with the average
        assert strategy.model is model and all(torch.equal(v, model.state_dict()[k]) for k, v in trained.items())
        after = ema.model.state_dict()  # the average kept where the evaluation did not grow it
        for key, value in averaged.items():
            overlap = tuple(slice(0, n) for n in value.shape)
            assert torch.equal(after[key][overlap], value), key
        assert evaluation_model(strategy)[0] is ema.model


def test_an_evaluation_that_raises_never_leaves_the_average_in_the_trained_model():
    model, benchmark = _model_and_benchmark("incremental")

    class Fails(SupervisedPlugin):
        def after_eval_exp(self, strategy, **kwargs):
            if strategy.experience.current_experience == 1:
                raise RuntimeError("a metric failed")

    ema = EMAEvaluationPlugin()
    strategy = _naive(model, [ema, Fails()])
    strategy.train(benchmark.train_stream[0])
    trained = _state(model)
    with pytest.raises(RuntimeError, match="a metric failed"):
        strategy.eval(benchmark.test_stream)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in trained.items())  # never written to
    strategy.eval(benchmark.test_stream[:1])  # the next hook puts the trained model back
    assert strategy.model is model
    strategy.train(benchmark.train_stream[1])
    assert strategy.model is model


def test_a_plugin_reused_for_a_second_run_is_refused():
    model, benchmark = _model_and_benchmark("incremental")
    ema = EMAEvaluationPlugin()
    _naive(model, [ema]).train(benchmark.train_stream[0])
    second, _ = _model_and_benchmark("incremental")
    with pytest.raises(RuntimeError, match="this EMAEvaluationPlugin already trained with another strategy and keeps "
                                           r"its averaged weights: give each strategy \(each run\) its own"):
        _naive(second, [ema]).train(benchmark.train_stream[0])
