from types import SimpleNamespace

import pytest
import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from ckd import KDReplayPlugin
from ckd.benchmarking.run_config import RunConfig
from ckd.benchmarking.runner import run
from ckd.data.streams import make_stream
from ckd.distillation.parts.current_data import CurrentDistillationPlugin
from ckd.distillation.parts.feature_distillation import FeatureDistillationPlugin, RelationDistillationPlugin
from test_plugins import _mlp, _strategy, _train


@pytest.fixture(scope="module")
def digits():
    return make_stream("split-digits", seed=0)


class _LossTrace(SupervisedPlugin):
    """Records strategy.loss before and after the plugins listed before it add their terms."""

    def __init__(self):
        super().__init__()
        self.losses = []
        self.experience_one = []

    def before_backward(self, strategy, **kwargs):
        self.losses.append(float(strategy.loss))
        if strategy.experience.current_experience == 1:
            self.experience_one.append(self.losses[-1])


@pytest.mark.parametrize("cls", [FeatureDistillationPlugin, RelationDistillationPlugin])
def test_feature_terms_are_added_on_replayed_rows_and_hooks_are_removed(digits, cls):
    model = _mlp()
    kd = KDReplayPlugin(mem_size=60, replay_batch_size=8, beta=1.0)
    plugin = cls(kd, weight=1.0)
    before, after = _LossTrace(), _LossTrace()
    _train(_strategy(model, [kd, before, plugin, after], epochs=1), digits, experiences={0, 1})
    added = [b - a for a, b in zip(before.losses, after.losses)]
    assert added and all(x >= 0 for x in added) and any(x > 0 for x in added)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())  # hooks gone after training
    assert all(len(m._forward_hooks) == 0 for m in kd.teacher.model.modules())


def test_feature_term_is_zero_until_the_student_moves_away_from_its_teacher(digits):
    model = _mlp()
    kd = KDReplayPlugin(mem_size=60, replay_batch_size=8)
    feature = FeatureDistillationPlugin(kd, modules=["2"], weight=1.0)  # the first ReLU's output
    before, after = _LossTrace(), _LossTrace()
    _train(_strategy(model, [kd, before, feature, after], epochs=1), digits, experiences={0, 1})
    added = [b - a for a, b in zip(before.experience_one, after.experience_one)]
    # First step of experience 1: the student is still the snapshot, so the features agree.
    assert added[0] == pytest.approx(0.0, abs=1e-7)
    assert max(added[1:]) > 1e-6


def test_feature_plugins_reject_bad_settings():
    with pytest.raises(ValueError, match="teacher 'cached' keeps logits only"):
        FeatureDistillationPlugin(KDReplayPlugin(teacher="cached"))
    with pytest.raises(ValueError, match="weight must be >= 0, got -1"):
        RelationDistillationPlugin(KDReplayPlugin(), weight=-1)
    with pytest.raises(ValueError, match="metric must be 'l2' or 'cosine'"):
        FeatureDistillationPlugin(KDReplayPlugin(), metric="l1")
    with pytest.raises(ValueError, match="no nn.Linear layer, which distilling the penultimate features"):
        from ckd.distillation.parts.feature_distillation import _resolve

        _resolve(nn.Sequential(nn.ReLU()), "penultimate")


@pytest.mark.parametrize("method", ["kd-feature", "kd-relation", "kd-replay-lwf", "kd-multi-teacher"])
def test_runner_methods_train_end_to_end(method):
    result = run(RunConfig("split-digits", method, seed=0, epochs=1, method_args={"mem_size": 100}))
    assert result["final_average_accuracy"] > 0.4
    assert result["config"]["method_args"]["mem_size"] == 100


def test_lwf_alone_adds_its_term_once_the_student_leaves_its_teacher(digits):
    off = run(RunConfig("split-digits", "kd-lwf", seed=0, epochs=1, method_args={"current_alpha": 0.0}))
    assert set(off["config"]["method_args"]) == {"current_alpha", "temperature"}  # no buffer
    naive = run(RunConfig("split-digits", "naive", seed=0, epochs=1))
    assert off["accuracy_matrix"] == naive["accuracy_matrix"]  # at weight 0 the part changes nothing

    before, after = _LossTrace(), _LossTrace()
    lwf = CurrentDistillationPlugin(alpha=1.0, temperature=2.0)
    _train(_strategy(_mlp(), [before, lwf, after], epochs=1), digits, experiences={0, 1})
    added = [b - a for a, b in zip(before.losses, after.losses)]
    first = len(added) - len(after.experience_one)
    assert added[:first] == [0.0] * first  # no teacher while the first experience trains
    # First step of experience 1: the student is still the snapshot, so KL(teacher || student) = 0.
    assert added[first] == pytest.approx(0.0, abs=1e-6)
    assert min(added[first + 1:]) >= 0.0 and max(added[first + 1:]) > 1e-3


@pytest.mark.parametrize("known_classes_only", [True, False])
def test_current_distillation_on_known_or_on_every_output_against_a_hand_computed_kl(digits, known_classes_only):
    model = _mlp()
    lwf = CurrentDistillationPlugin(alpha=0.5, temperature=3.0, known_classes_only=known_classes_only)
    _train(_strategy(model, [lwf], epochs=1), digits, experiences={0})
    lwf._alpha = 0.5
    known = sorted(digits.benchmark.train_stream[0].classes_in_this_experience)
    new = digits.benchmark.test_stream[1].dataset
    x = torch.stack([new[i][0] for i in range(4)])  # samples of new classes
    student = torch.randn(4, 10)
    strategy = SimpleNamespace(mb_x=x, mb_task_id=torch.zeros(4, dtype=torch.long), mb_output=student,
                               loss=torch.tensor(0.0), plugins=[lwf])
    lwf.before_backward(strategy)
    with torch.no_grad():
        teacher = model(x)  # the snapshot is the model as experience 0 left it
    columns = known if known_classes_only else list(range(10))
    p_t = torch.softmax(teacher[:, columns] / 3.0, dim=1)
    log_p_s = torch.log_softmax(student[:, columns] / 3.0, dim=1)
    expected = 0.5 * 9.0 * (p_t * (p_t.log() - log_p_s)).sum(dim=1).mean()
    assert float(strategy.loss) == pytest.approx(float(expected), rel=1e-5)
    assert len(known) < 10


def test_current_distillation_refuses_a_non_boolean_class_choice():
    with pytest.raises(ValueError, match="known_classes_only must be true or false, got 'all'"):
        CurrentDistillationPlugin(known_classes_only="all")
