import gc
import re
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.models import IncrementalClassifier, MultiHeadClassifier, MultiTaskModule
from avalanche.training import Naive
from avalanche.training.plugins import EvaluationPlugin, EWCPlugin, LRSchedulerPlugin
from torch import nn

import user_scripts
from ckd import KDReplayPlugin
from ckd.benchmarking.run_config import RunConfig
from ckd.benchmarking.runner import run
from ckd.benchmarking.scoring import AccuracyEvaluator
from ckd.data.streams import make_stream
from ckd.distillation.parts.current_data import AsymmetricCrossEntropyPlugin, CurrentDistillationPlugin
from ckd.distillation.parts.feature_distillation import FeatureDistillationPlugin, RelationDistillationPlugin
from ckd.distillation.parts.logit_matching import LogitMatchingPlugin
from ckd.distillation.plugin import KDReplayConfig
from ckd.distillation.teachers import EnsembleTeacher


@pytest.fixture(scope="module")
def digits():
    return make_stream("split-digits", seed=0)


def _mlp(n_in=64, n_out=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, 100), nn.ReLU(), nn.Linear(100, n_out))


def _strategy(model, plugins, epochs=3, lr=0.1):
    return Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=10,
        train_epochs=epochs,
        eval_mb_size=256,
        plugins=plugins,
        evaluator=EvaluationPlugin(loggers=[]),
    )


def _train(strategy, stream, experiences=None, seed=0):
    evaluator = AccuracyEvaluator(stream, torch.device("cpu"), 512)
    rows = []
    for i, exp in enumerate(stream.benchmark.train_stream):
        if experiences is not None and i not in experiences:
            continue
        torch.manual_seed(seed * 1000 + i)
        strategy.train(exp)
        rows.append(evaluator.accuracies(strategy.model)[0])
    return rows


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
        ({"temperature": -2}, "temperature must be > 0, got -2"),
        ({"alpha": -0.1}, "alpha must be >= 0, got -0.1"),
        ({"alpha": float("nan")}, "alpha must be >= 0, got nan"),
        ({"beta": -1.0}, "beta must be >= 0, got -1.0"),
        ({"mem_size": 0}, "mem_size must be an integer >= 1, got 0"),
        ({"mem_size": 2.5}, "mem_size must be an integer >= 1, got 2.5"),
        ({"replay_batch_size": 0}, "replay_batch_size must be an integer >= 1, got 0"),
        ({"policy": "fifo"}, "policy must be one of"),
        ({"teacher": "teacher-of-the-year"}, "teacher must be one of"),
        ({"alpha": [1.0, -0.5]}, "alpha must be >= 0, got -0.5"),
        ({"alpha": []}, "alpha as a per-experience list must not be empty"),
        ({"temperature": "4"}, "temperature must be a number > 0, got '4'"),
        ({"alpha": None}, "alpha must be a number >= 0, got None"),
        ({"beta": "1"}, "beta must be a number >= 0, got '1'"),
        ({"alpha": (1.0, "x")}, "alpha must be a number >= 0 or one per experience, got (1.0, 'x')"),
        ({"config": 42}, "config must be a KDReplayConfig or a dict of its settings, got int"),
        ({"teacher": 3}, "teacher must be a teacher name ('snapshot', 'cached', 'own', 'ensemble', 'ema'), "
                         "a teacher part (ckd.distillation.teachers) or a trained torch.nn.Module, got int"),
    ],
)
def test_invalid_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        KDReplayPlugin(**kwargs)


def test_numpy_integers_and_a_dict_config_are_accepted():
    kd = KDReplayPlugin(mem_size=np.int64(200), replay_batch_size=np.int32(16))
    assert (kd.config.mem_size, kd.config.replay_batch_size) == (200, 16) and type(kd.config.mem_size) is int
    assert KDReplayPlugin(config={"mem_size": 100, "temperature": 2.0}).config == KDReplayConfig(mem_size=100,
                                                                                                 temperature=2.0)
    assert KDReplayPlugin(config=KDReplayConfig(mem_size=100), teacher="ema").config.teacher == "ema"
    with pytest.raises(TypeError, match="KDReplayPlugin has no setting 'tempreature'"):
        KDReplayPlugin(config={"tempreature": 2.0})
    with pytest.raises(ValueError, match="temperature must be a number > 0, got '4'"):
        CurrentDistillationPlugin(temperature="4")
    with pytest.raises(ValueError, match="alpha must be a number >= 0, got None"):
        CurrentDistillationPlugin(alpha=None)


class _RecordReplay(SupervisedPlugin):
    """Whether each step of the first experience distilled, and from which targets."""

    def __init__(self, kd):
        super().__init__()
        self.kd = kd
        self.steps = []

    def before_backward(self, strategy, **kwargs):
        step = self.kd.replay
        if step is not None and step.teacher_logits is not None:
            self.steps.append((step.x, step.teacher_logits))


def test_a_trained_model_is_a_frozen_teacher_from_the_first_experience():
    benchmark = user_scripts.three_experiences()
    teacher = user_scripts.net(seed=1)  # trained beforehand, on whatever the user had
    before = [p.detach().clone() for p in teacher.parameters()]
    kd = KDReplayPlugin(teacher=teacher, mem_size=50, replay_batch_size=8)
    record = _RecordReplay(kd)
    strategy = user_scripts.naive(user_scripts.net(), [kd, record])
    strategy.train(benchmark.train_stream[0])
    assert record.steps  # distilled as soon as the buffer held samples
    with torch.no_grad():
        for x, targets in record.steps:
            assert torch.equal(targets, teacher(x))
    strategy.train(benchmark.train_stream[1])
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))  # the user's model is untouched
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    frozen = kd.teacher.model
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, frozen.parameters()))


@pytest.mark.parametrize("teacher", ["snapshot", "ema", "ensemble", "cached"])
def test_samples_without_task_labels_and_an_empty_experience_train(teacher):
    benchmark = user_scripts.three_experiences(empty_second=True)
    kd = KDReplayPlugin(teacher=teacher, mem_size=50, replay_batch_size=8, policy="class_balanced")
    lwf = CurrentDistillationPlugin()
    strategy = user_scripts.naive(user_scripts.net(), [kd, lwf])
    for experience in benchmark.train_stream:
        strategy.train(experience, shuffle=False)  # Avalanche's DataLoader cannot shuffle an empty experience
    assert kd.seen_classes.tolist() == [[True, True, False, False, True, True]]
    assert lwf.seen_classes.tolist() == kd.seen_classes.tolist() and lwf.teacher is not None
    assert sorted(kd.buffer.y.unique().tolist()) == [0, 1, 4, 5]


def test_construction_is_keyword_only_and_the_config_is_the_one_source_of_defaults():
    with pytest.raises(TypeError):
        KDReplayPlugin(100)
    with pytest.raises(TypeError, match="no setting 'known_classes_only'"):
        KDReplayPlugin(known_classes_only=True)
    assert KDReplayPlugin().config == KDReplayConfig()
    assert KDReplayPlugin(mem_size=7).config == KDReplayConfig(mem_size=7)
    from ckd.benchmarking.methods import METHOD_DEFAULTS

    # The runner's kd-replay starts from the same values.
    for key, value in vars(KDReplayConfig()).items():
        if key != "seed":
            assert METHOD_DEFAULTS["kd-replay"][key] == value


@pytest.mark.slow
def test_plugin_reduces_forgetting_on_split_digits():
    # Naive fine-tuning in class-IL ends up predicting only the last two classes:
    # accuracy ≈ 20 % and forgetting ≈ 100 %. With 200 slots (~20 per class) the plugin
    # keeps most of the old classes; its margin over naive is > 50 points on accuracy
    # and > 60 points on forgetting in every seed we ran, so these thresholds have room.
    base = RunConfig("split-digits", "naive", seed=0)
    kd = RunConfig("split-digits", "kd-replay", seed=0, method_args={"mem_size": 200})
    naive_result, kd_result = run(base), run(kd)
    assert naive_result["final_average_accuracy"] < 0.30
    assert naive_result["average_forgetting"] > 0.75
    assert kd_result["final_average_accuracy"] > 0.75
    assert kd_result["final_average_accuracy"] - naive_result["final_average_accuracy"] > 0.45
    assert kd_result["average_forgetting"] < 0.25
    assert naive_result["average_forgetting"] - kd_result["average_forgetting"] > 0.5


def _final_accuracy(plugins, seed=0):
    stream = make_stream("split-digits", seed=seed)
    torch.manual_seed(seed)
    rows = _train(_strategy(_mlp(), plugins), stream, seed=seed)
    return sum(rows[-1]) / len(rows[-1]), rows


@pytest.mark.slow
def test_the_readme_construction_protects_old_classes_and_so_does_pure_kd():
    # The construction a user writes first: 100 slots, alpha 1, T 2, replay batch 16.
    # Naive fine-tuning keeps only the last two classes (~20 %).
    naive, _ = _final_accuracy([])
    user, _ = _final_accuracy([KDReplayPlugin(mem_size=100, alpha=1.0, temperature=2.0, replay_batch_size=16)])
    assert naive < 0.3
    assert user - naive > 0.25
    # Pure soft-target rehearsal (no hard-label term) on its own also protects them:
    # accuracy on the first experience after the last one stays far above naive's 0.
    pure, rows = _final_accuracy([KDReplayPlugin(mem_size=100, alpha=1.0, temperature=2.0, replay_batch_size=16, beta=0.0)])
    assert pure - naive > 0.25
    assert rows[-1][0] > 0.3


@pytest.mark.slow
@pytest.mark.mnist
def test_plugin_reduces_forgetting_on_split_mnist(mnist_root):
    # Split-MNIST, class-IL, DER class order, MLP 784-100-100-10, same seed and budget
    # (2000 training images per experience, one epoch). Naive forgets almost everything
    # (accuracy ≈ 20 %); replay + distillation from 500 slots keeps well over 70 %.
    common = dict(seed=0, max_train_per_experience=2000, max_test_per_experience=1000, lr=0.05)
    naive_result = run(RunConfig("split-mnist", "naive", **common), data_root=mnist_root)
    kd_result = run(RunConfig("split-mnist", "kd-replay", method_args={"mem_size": 500}, **common), data_root=mnist_root)
    assert naive_result["final_average_accuracy"] < 0.30
    assert kd_result["final_average_accuracy"] > 0.70
    assert kd_result["final_average_accuracy"] - naive_result["final_average_accuracy"] > 0.4
    assert naive_result["average_forgetting"] - kd_result["average_forgetting"] > 0.5


class _Probe(SupervisedPlugin):
    """Records what the KD plugin exposes and what the strategy's criterion sees."""

    def __init__(self, kd):
        super().__init__()
        self.kd = kd
        self.seen = []

    def before_backward(self, strategy, **kwargs):
        step = self.kd.replay
        if step is not None:
            self.seen.append(
                (
                    strategy.mb_output.shape[0],
                    strategy.mb_x.shape[0],
                    step.rows,
                    step.student_logits.shape,
                    step.sample.index.shape[0],
                )
            )


def test_replayed_rows_are_exposed_and_criterion_sees_current_rows_only(digits):
    kd = KDReplayPlugin(mem_size=100, replay_batch_size=16, policy="class_balanced")
    probe = _Probe(kd)
    _train(_strategy(_mlp(), [kd, probe], epochs=1), digits, experiences={0, 1})
    assert probe.seen, "nothing was replayed in the second experience"
    for n_out, n_x, rows, logits_shape, n_sampled in probe.seen:
        assert n_out == n_x  # the strategy's own loss is on the current samples only
        assert rows == slice(n_x, n_x + 16)
        assert logits_shape == (16, 10) and n_sampled == 16


def test_teacher_is_frozen_in_eval_mode_and_previous_snapshot_released(digits):
    kd = KDReplayPlugin(mem_size=100)
    strategy = _strategy(_mlp(), [kd], epochs=1)
    _train(strategy, digits, experiences={0})
    first = kd.teacher.model
    assert not first.training and not any(p.requires_grad for p in first.parameters())
    frozen = [p.clone() for p in first.parameters()]
    ref = weakref.ref(first)
    del first
    _train(strategy, digits, experiences={1})
    # While experience 1 trained, the teacher of experience 0 did not move; now it is gone.
    gc.collect()
    assert ref() is None
    assert kd.teacher.model is not strategy.model
    assert not all(torch.equal(a, b) for a, b in zip(frozen, kd.teacher.model.parameters()))


def test_cached_logits_equal_snapshot_teacher_with_class_balanced_buffer(digits):
    def final_row(teacher):
        torch.manual_seed(0)
        kd = KDReplayPlugin(mem_size=100, teacher=teacher, policy="class_balanced", beta=1.0)
        return _train(_strategy(_mlp(), [kd], epochs=1), digits, experiences={0, 1, 2})[-1]

    # The buffer is fixed while an experience trains, so cached logits are the snapshot's.
    snapshot, cached = final_row("snapshot"), final_row("cached")
    assert snapshot == pytest.approx(cached, abs=1e-6)


class _IncrementalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU())
        self.classifier = IncrementalClassifier(64, initial_out_features=2)

    def forward(self, x):
        return self.classifier(self.features(x))


class _KDTrace(SupervisedPlugin):
    def __init__(self, kd):
        super().__init__()
        self.kd = kd
        self.widths = []

    def before_backward(self, strategy, **kwargs):
        step = self.kd.replay
        if step is not None and step.teacher_logits is not None:
            self.widths.append((step.student_logits.shape[1], step.teacher_logits.shape[1], step.teacher_mask))


def test_growing_incremental_classifier_distils_only_the_teachers_classes(digits):
    kd = KDReplayPlugin(mem_size=60, replay_batch_size=8, beta=1.0)
    trace = _KDTrace(kd)
    model = _IncrementalNet()
    _train(_strategy(model, [kd, trace], epochs=1), digits, experiences={0, 1, 2})
    assert model.classifier.classifier.out_features == 6
    # Experience 1: student has 4 outputs, teacher 2; experience 2: student 6, teacher 4:
    # every one of the teacher's outputs is a target, the student's new ones are not
    # (a row is masked only whole: a sample of the experience being learned).
    assert {(s, t) for s, t, _ in trace.widths} == {(4, 2), (6, 4)}
    for _, t, mask in trace.widths:
        assert mask.shape[1] == t and bool((mask.all(1) | ~mask.any(1)).all()) and bool(mask.any())


class _LossBefore(SupervisedPlugin):
    """Records ``strategy.loss`` as it is before the plugins placed after this one add to it."""

    def before_backward(self, strategy, **kwargs):
        self.loss = float(strategy.loss)


class _MultiHeadNet(MultiTaskModule):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU())
        self.classifier = MultiHeadClassifier(64, initial_out_features=2)

    def forward_single_task(self, x, task_label):
        return self.classifier(self.features(x), task_label)


def test_multi_head_model_distils_each_replayed_sample_on_its_own_head():
    stream = make_stream("split-digits", seed=0, task_labels=True)
    kd = KDReplayPlugin(mem_size=60, replay_batch_size=12, policy="reservoir", alpha=0.7, temperature=3.0, beta=0.0)
    checked, unseen = [], []

    before = _LossBefore()

    class After(SupervisedPlugin):
        def before_backward(self, strategy, **kwargs):
            step = kd.replay
            if step is None or kd.teacher is None:
                return
            # Hand computation: each row's KL on its own task's head of the frozen teacher.
            total = 0.0
            for r in range(step.x.shape[0]):
                task = int(step.sample.task[r])
                if not kd.teacher.known_tasks[task:].any():
                    continue  # a task the teacher has no head for: no target, counts as 0
                with torch.no_grad():
                    z_t = kd.teacher.model(step.x[r : r + 1], torch.tensor([task]))[0].double()
                z_s = step.student_logits[r, : z_t.shape[0]].detach().double()
                p_t = torch.softmax(z_t / 3.0, 0)
                total += 9.0 * float((p_t * (p_t.log() - torch.log_softmax(z_s / 3.0, 0))).sum())
            expected = 0.7 * total / step.x.shape[0]
            assert float(strategy.loss) - before.loss == pytest.approx(expected, rel=1e-4, abs=1e-6)
            checked.append(set(step.sample.task.tolist()))
            unseen.append(bool((step.sample.task >= kd.teacher.known_tasks.shape[0]).any()))

    model = _MultiHeadNet()
    _train(_strategy(model, [before, kd, After()], epochs=1), stream, experiences={0, 1, 2})
    assert len(checked) > 10
    assert any(len(tasks) > 1 for tasks in checked)  # replay batches mix heads
    assert any(unseen)  # and hold samples of the current task, which no teacher head knows
    assert kd.teacher.known_tasks.tolist() == [True, True, True]


def test_composes_with_ewc_and_lr_scheduler(digits):
    model = _mlp()
    kd = KDReplayPlugin(mem_size=100, beta=1.0)
    strategy = _strategy(model, [], epochs=2)
    scheduler = torch.optim.lr_scheduler.StepLR(strategy.optimizer, step_size=1, gamma=0.5)
    strategy.plugins.extend([kd, EWCPlugin(ewc_lambda=10.0), LRSchedulerPlugin(scheduler)])
    rows = _train(strategy, digits, experiences={0, 1})
    assert len(rows) == 2 and len(kd.buffer) == 100
    assert sum(rows[-1][:2]) / 2 > 0.5  # experience 0 is still known


def test_nan_distillation_loss_raises_a_clear_error(digits):
    kd = KDReplayPlugin(mem_size=50)
    strategy = _strategy(_mlp(), [kd], epochs=1)
    _train(strategy, digits, experiences={0})
    kd.teacher.logits = lambda x, t: (torch.full((x.shape[0], 10), float("nan")), torch.ones(x.shape[0], 10, dtype=torch.bool))
    with pytest.raises(FloatingPointError, match="NaN or infinite in experience 1"):
        _train(strategy, digits, experiences={1})


def test_a_student_that_loses_outputs_is_rejected(digits):
    kd = KDReplayPlugin(mem_size=50)
    model = _mlp()
    strategy = _strategy(model, [kd], epochs=1)
    _train(strategy, digits, experiences={0})
    model[-1] = nn.Linear(100, 5)
    strategy.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="student has 5 outputs but the teacher has 10"):
        _train(strategy, digits, experiences={1})


def _checkpointed_strategy(policy, teacher):
    torch.manual_seed(0)
    return _strategy(_mlp(), [KDReplayPlugin(mem_size=80, policy=policy, teacher=teacher, beta=1.0)])


RESUME_SCRIPT = r"""
import sys
sys.path.insert(0, {tests!r})
from avalanche.checkpointing import maybe_load_checkpoint
from test_plugins import _checkpointed_strategy, _train
from ckd.data.streams import make_stream

strategy, start = maybe_load_checkpoint(_checkpointed_strategy({policy!r}, {teacher!r}), {ckpt!r})
print("ROWS", (start, _train(strategy, make_stream("split-digits", seed=0), experiences=set(range(start, 5)))))
"""


@pytest.mark.slow
@pytest.mark.parametrize("policy, teacher", [("class_balanced", "snapshot"), ("reservoir", "cached"), ("reservoir", "ema")])
def test_checkpoint_round_trip_in_a_new_process_matches_uninterrupted_run(tmp_path, digits, policy, teacher):
    from avalanche.checkpointing import save_checkpoint

    full = _train(_checkpointed_strategy(policy, teacher), digits)
    strategy = _checkpointed_strategy(policy, teacher)
    first = _train(strategy, digits, experiences={0, 1})
    save_checkpoint(strategy, tmp_path / "ckpt.pkl")
    del strategy
    code = RESUME_SCRIPT.format(
        tests=str(Path(__file__).parent), policy=policy, teacher=teacher, ckpt=str(tmp_path / "ckpt.pkl")
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    start, rest = eval(out.stdout.split("ROWS", 1)[1])
    assert start == 2 and len(rest) == 3
    assert first + rest == full


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_plugin_trains_on_cuda(digits):
    kd = KDReplayPlugin(mem_size=100, beta=1.0, policy="reservoir")
    model = _mlp().cuda()
    strategy = Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=10, train_epochs=1,
        eval_mb_size=256, device="cuda", plugins=[kd], evaluator=EvaluationPlugin(loggers=[]),
    )
    for i, exp in enumerate(digits.benchmark.train_stream):
        if i > 1:
            break
        strategy.train(exp)
    assert kd.buffer.x.device.type == "cuda" and kd.replay is not None


@pytest.mark.parametrize("teacher, refreshed", [("own", False), ("cached", True)])
def test_cached_logits_are_refreshed_or_kept_from_the_samples_own_experience(digits, teacher, refreshed):
    kd = KDReplayPlugin(mem_size=60, teacher=teacher, beta=1.0, policy="class_balanced")
    strategy = _strategy(_mlp(), [kd], epochs=1)
    _train(strategy, digits, experiences={0})
    x0, logits0 = kd.buffer.x.clone(), kd.buffer.logits.clone()
    _train(strategy, digits, experiences={1})
    old = (kd.buffer.experience == 0).nonzero().squeeze(1)
    assert 0 < old.numel() < 60
    # Match each surviving experience-0 sample to its row before the refill.
    match = (kd.buffer.x[old].flatten(1)[:, None] == x0.flatten(1)[None]).all(-1).float().argmax(1)
    same = torch.allclose(kd.buffer.logits[old], logits0[match])
    assert same is not refreshed
    assert kd.buffer.logits_mask.all()


def test_asymmetric_cross_entropy_masks_old_classes_for_the_current_loss(digits):
    kd = KDReplayPlugin(mem_size=60, replay_batch_size=8, beta=1.0, policy="class_balanced")
    seen = []

    class Spy(SupervisedPlugin):
        def before_backward(self, strategy, **kwargs):
            if kd.replay is not None:
                seen.append((strategy.mb_output.detach().clone(), kd.replay.student_logits.detach().clone()))

    _train(_strategy(_mlp(), [kd, AsymmetricCrossEntropyPlugin(), Spy()], epochs=1), digits, experiences={0, 1})
    assert seen
    for current, replayed in seen:
        # Experience 1 holds classes 2 and 3: every other logit of a current row is masked.
        others = [c for c in range(10) if c not in (2, 3)]
        assert torch.all(current[:, others] < -1e30)
        assert torch.all(current[:, [2, 3]] > -1e30)
        assert torch.all(replayed > -1e30)  # replayed rows keep the whole head


def test_asymmetric_cross_entropy_before_the_kd_plugin_is_refused(digits):
    kd = KDReplayPlugin(mem_size=60, replay_batch_size=8)
    with pytest.raises(ValueError, match="place AsymmetricCrossEntropyPlugin after the KDReplayPlugin"):
        _train(_strategy(_mlp(), [AsymmetricCrossEntropyPlugin(), kd], epochs=1), digits, experiences={0})


class _LwFProbe(SupervisedPlugin):
    """Checks, at each step, the loss the LwF plugin added on the current samples."""

    def __init__(self, lwf):
        super().__init__()
        self.lwf = lwf
        self.checked = 0

    def before_backward(self, strategy, **kwargs):
        if self.lwf.teacher is None:
            return
        from ckd.distillation.losses import soft_kl

        x, y = strategy.mb_x, strategy.mb_y
        with torch.no_grad():
            teacher = self.lwf.teacher.model(x)
        old = torch.zeros(10, dtype=torch.bool)
        old[self.lwf.seen_classes[0].nonzero().squeeze(1)] = True
        expected = nn.functional.cross_entropy(strategy.mb_output, y) + 0.5 * soft_kl(
            strategy.mb_output, teacher, 2.0, old
        )
        assert float(strategy.loss) == pytest.approx(float(expected), rel=1e-5)
        self.checked += 1


def test_current_data_distillation_is_lwf_on_the_teachers_classes(digits):
    lwf = CurrentDistillationPlugin(alpha=0.5, temperature=2.0)
    probe = _LwFProbe(lwf)
    _train(_strategy(_mlp(), [lwf, probe], epochs=1), digits, experiences={0, 1})
    assert probe.checked > 0


def test_current_data_distillation_shares_the_kd_plugins_teacher(digits):
    kd = KDReplayPlugin(mem_size=60)
    lwf = CurrentDistillationPlugin(alpha=0.5, kd=kd)
    _train(_strategy(_mlp(), [kd, lwf], epochs=1), digits, experiences={0, 1})
    assert lwf.teacher is kd.teacher and lwf.own is None


def test_current_alpha_needs_a_teacher_model():
    from ckd.benchmarking.methods import TrainSettings, make_strategy

    settings = TrainSettings(0.1, 10, 1, 100, "cpu")
    with pytest.raises(ValueError, match="current_alpha > 0 needs a teacher model"):
        make_strategy("kd-replay-lwf", _mlp(), settings, {**_kd_args(), "current_alpha": 1.0, "teacher": "cached"})
    with pytest.raises(ValueError, match="alpha must be >= 0, got -1"):
        CurrentDistillationPlugin(alpha=-1)


def _kd_args():
    from ckd.benchmarking.methods import resolve_method_args

    return resolve_method_args("kd-replay-lwf")


def _final_weights(stream, teacher=None, **kwargs):
    torch.manual_seed(0)
    model = _mlp()
    strategy = _strategy(model, [KDReplayPlugin(mem_size=100, beta=1.0, teacher=teacher, **kwargs)], epochs=1)
    _train(strategy, stream, experiences=range(3))
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_per_experience_alpha_uses_the_value_of_the_experience_being_trained(digits):
    scalar = _final_weights(digits, alpha=0.5)
    assert torch.equal(_final_weights(digits, alpha=[0.5, 0.5, 0.5]), scalar)
    # The teacher only exists from experience 1 on, so alpha[0] never matters ...
    assert torch.equal(_final_weights(digits, alpha=[3.0, 0.5, 0.5]), scalar)
    # ... but alpha[2] does: zero there is training experience 2 without distillation.
    switched_off = _final_weights(digits, alpha=[0.5, 0.5, 0.0])
    assert not torch.equal(switched_off, scalar)
    assert not torch.equal(switched_off, _final_weights(digits, alpha=0.0))


def test_per_experience_alpha_shorter_than_the_stream_is_a_clear_error(digits):
    strategy = _strategy(_mlp(), [KDReplayPlugin(mem_size=50, alpha=[1.0, 1.0])], epochs=1)
    with pytest.raises(ValueError, match="alpha has 2 per-experience values but experience 2 is being trained"):
        _train(strategy, digits, experiences=range(3))


def test_several_teachers_keep_the_last_snapshots_and_one_teacher_is_kd_replay(digits):
    ensemble = EnsembleTeacher(n_teachers=2)
    plugin = KDReplayPlugin(mem_size=100, teacher=ensemble)
    _train(_strategy(_mlp(), [plugin], epochs=1), digits, experiences=range(3))
    assert ensemble.teachers.experiences == [1, 2]
    assert plugin.teacher is ensemble.teachers.teachers[-1]
    assert all(not t.model.training for t in ensemble.teachers.teachers)
    one = _final_weights(digits, teacher=EnsembleTeacher(n_teachers=1, ensemble="average"))
    assert torch.equal(one, _final_weights(digits))
    for kind in ("own", "average"):
        assert not torch.equal(_final_weights(digits, teacher=EnsembleTeacher(n_teachers=3, ensemble=kind)), one)


def test_distillation_metrics_report_student_against_teacher_during_eval(digits):
    from avalanche.evaluation.metrics import accuracy_metrics

    from ckd.distillation.diagnostics import distillation_report
    from ckd.distillation.parts.distillation_metrics import DistillationMetrics

    torch.manual_seed(0)
    kd = KDReplayPlugin(mem_size=100, beta=1.0, temperature=2.0)
    model = _mlp()
    strategy = Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=nn.CrossEntropyLoss(),
        train_mb_size=10, train_epochs=1, eval_mb_size=64, plugins=[kd],
        evaluator=EvaluationPlugin(accuracy_metrics(experience=True), DistillationMetrics(kd), loggers=[]),
    )
    test = digits.benchmark.test_stream
    strategy.train(digits.benchmark.train_stream[0])
    name = "Distillation_agreement/eval_phase/test_stream/Task000/Exp000"
    assert name not in strategy.eval(test[:1])  # nothing was distilled yet
    teacher = kd.teacher  # the snapshot the second experience is distilled from
    strategy.train(digits.benchmark.train_stream[1])
    assert kd.teacher is not teacher  # the plugin has moved on to a copy of the student
    metrics = strategy.eval(test[:2])
    assert name in metrics
    x = torch.stack([test[0].dataset[i][0] for i in range(len(test[0].dataset))])
    y = torch.tensor([test[0].dataset[i][1] for i in range(len(test[0].dataset))])
    model.eval()
    with torch.no_grad():
        expected = distillation_report(model(x), teacher.logits(x, torch.zeros_like(y))[0], y, 2.0)
    assert expected["kl"] > 1e-3  # the student has moved away from that teacher
    for key, value in expected.items():
        # nan: the teacher got every sample right (or wrong), so one part is empty
        assert metrics[f"Distillation_{key}/eval_phase/test_stream/Task000/Exp000"] == pytest.approx(value, abs=1e-5, nan_ok=True)


def test_memory_bytes_count_the_buffer_and_each_stored_teacher(digits):
    model = _mlp()
    params = sum(p.numel() for p in model.parameters()) * 4
    kd = KDReplayPlugin(mem_size=100, teacher=EnsembleTeacher(n_teachers=2))
    cached = KDReplayPlugin(mem_size=100, teacher="cached")
    _train(_strategy(model, [kd], epochs=1), digits, experiences=range(3))
    _train(_strategy(_mlp(), [cached], epochs=1), digits, experiences=range(2))
    # 100 slots of 64 float32 pixels, int64 label, task and experience (+1 scratch row).
    buffer = 101 * (64 * 4 + 3 * 8)
    assert kd.memory_bytes() == {"buffer": buffer, "teachers": 2 * params}
    # Cached logits replace the model: 10 float32 logits and 10 mask bytes per row.
    assert cached.memory_bytes() == {"buffer": buffer + 101 * (10 * 4 + 10), "teachers": 0}


def test_logit_matching_adds_the_mse_to_the_teachers_targets(digits):
    kd = KDReplayPlugin(mem_size=60, replay_batch_size=8, beta=0.0)
    logits = LogitMatchingPlugin(kd, weight=0.5)
    checked = []

    before = _LossBefore()

    class After(SupervisedPlugin):
        def before_backward(self, strategy, **kwargs):
            step = kd.replay
            if step is None or step.teacher_logits is None:
                return
            from ckd.distillation.losses import soft_kl

            s, t, mask = step.student_logits.detach(), step.teacher_logits, step.teacher_mask
            kl = float(soft_kl(s, t, kd.config.temperature, mask))
            # Rows of the experience being learned have no target: they count as 0 in the mean.
            mse = float((((s - t) ** 2) * (1.0 if mask is None else mask)).sum()) / s.numel()
            assert float(strategy.loss) - before.loss == pytest.approx(kl + 0.5 * mse, rel=1e-5)
            checked.append(mse)

    _train(_strategy(_mlp(), [before, kd, logits, After()], epochs=1), digits, experiences={0, 1})
    assert checked and max(checked) > 0


# The parts that read a KDReplayPlugin's step, as a user's script builds them.
PARTS = {
    "LogitMatchingPlugin": lambda kd: LogitMatchingPlugin(kd),
    "FeatureDistillationPlugin": lambda kd: FeatureDistillationPlugin(kd),
    "RelationDistillationPlugin": lambda kd: RelationDistillationPlugin(kd),
    "CurrentDistillationPlugin": lambda kd: CurrentDistillationPlugin(kd=kd),
}


def _user_weights(plugins_around) -> torch.Tensor:
    """A user's script: the digits MLP after two experiences of split-digits with a plain
    ``Naive`` and ``plugins_around(kd)`` as its plugins; the weights, flattened."""
    model = user_scripts.digits_mlp()
    strategy = user_scripts.naive(model, plugins_around(KDReplayPlugin(mem_size=100)))
    for experience in user_scripts.split_digits().train_stream[:2]:
        strategy.train(experience)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.fixture(scope="module")
def kd_alone():
    return _user_weights(lambda kd: [kd])


@pytest.mark.parametrize("part", PARTS)
def test_a_part_of_the_kd_plugin_works_before_or_after_it(part, kd_alone):
    make = PARTS[part]
    after = _user_weights(lambda kd: [kd, make(kd)])
    before = _user_weights(lambda kd: [make(kd), kd])
    assert float((after - kd_alone).abs().max()) > 1e-3  # the part adds its term ...
    # ... wherever it sits in plugins=[...]: the same terms, added to the loss in another order
    torch.testing.assert_close(before, after, rtol=0, atol=1e-6)


@pytest.mark.parametrize("part", PARTS)
def test_a_part_whose_kd_plugin_is_not_among_the_plugins_is_refused(part):
    model = user_scripts.digits_mlp()
    untrained = [p.detach().clone() for p in model.parameters()]
    strategy = user_scripts.naive(model, [PARTS[part](KDReplayPlugin(mem_size=100))])  # the KD plugin left out
    message = (f"{part} reads a KDReplayPlugin that is not among the strategy's plugins (it would never run): "
               "pass that same KDReplayPlugin object in plugins=[...]")
    with pytest.raises(ValueError, match=re.escape(message)):
        strategy.train(user_scripts.split_digits().train_stream[0])
    assert all(torch.equal(a, b) for a, b in zip(untrained, model.parameters()))  # refused before any step


def _replaying_strategy(name, model, kd):
    """A user's strategy with ``kd`` and something else that replays old samples."""
    from avalanche.training import DER, ER_ACE
    from avalanche.training.plugins import ReplayPlugin

    from ckd.distillation.replay import ExperienceReplayPlugin

    if name in ("DER", "ER_ACE"):
        strategy = DER if name == "DER" else ER_ACE
        return strategy(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                        criterion=nn.CrossEntropyLoss(), mem_size=200, train_mb_size=16, train_epochs=1,
                        eval_mb_size=64, plugins=[kd], evaluator=EvaluationPlugin(loggers=[]))
    other = {"ReplayPlugin": lambda: ReplayPlugin(mem_size=200),
             "ExperienceReplayPlugin": lambda: ExperienceReplayPlugin(mem_size=200),
             "other KDReplayPlugin": lambda: KDReplayPlugin(mem_size=200)}[name]()
    return user_scripts.naive(model, [other, kd])


@pytest.mark.parametrize("name, remedy", [
    ("ReplayPlugin", "the strategy's ReplayPlugin replays too (its old samples would be stored again as current ones): "
                     "remove the ReplayPlugin from plugins=[...]"),
    ("ExperienceReplayPlugin", "the strategy's ExperienceReplayPlugin replays too"),
    ("other KDReplayPlugin", "the strategy's other KDReplayPlugin replays too"),
    ("DER", "the strategy DER replays too (its old samples would be stored again as current ones): use a strategy "
            "without replay, such as Naive"),
    ("ER_ACE", "the strategy ER_ACE replays too"),
])
def test_another_replay_beside_the_kd_plugin_is_refused(name, remedy):
    # Avalanche's replay loader mixes its memory into the minibatch: the KD plugin would store
    # those old samples again, tagged as the current experience, with no soft target.
    model = user_scripts.digits_mlp()
    untrained = [p.detach().clone() for p in model.parameters()]
    kd = KDReplayPlugin(mem_size=200)
    first = user_scripts.split_digits().train_stream[0]
    with pytest.raises(ValueError, match="^" + re.escape(f"KDReplayPlugin keeps its own replay buffer and {remedy}")):
        _replaying_strategy(name, model, kd).train(first)
    assert all(torch.equal(a, b) for a, b in zip(untrained, model.parameters()))  # refused before any step
    user_scripts.naive(model, [kd]).train(first)  # the other replay removed, the same plugin trains
    assert len(kd.buffer) == 200


def test_ema_evaluation_scores_the_averaged_weights_and_restores_the_trained_ones(digits):
    from ckd.distillation.parts.weight_averaging import EMAEvaluationPlugin, evaluation_model

    ema = EMAEvaluationPlugin(half_life=0.2)
    model = _mlp()
    strategy = _strategy(model, [KDReplayPlugin(mem_size=60), ema], epochs=1)
    assert evaluation_model(strategy) == (model, "model")  # nothing averaged yet
    _train(strategy, digits, experiences={0, 1})
    trained = [p.detach().clone() for p in model.parameters()]
    averaged = [p.detach().clone() for p in ema.model.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(trained, averaged))
    assert evaluation_model(strategy) == (ema.model, "ema")

    class Spy(SupervisedPlugin):
        def before_eval_iteration(self, strategy, **kwargs):
            self.weights = [p.detach().clone() for p in strategy.model.parameters()]

    spy = Spy()
    strategy.plugins.append(spy)
    strategy.eval(digits.benchmark.test_stream[:1])
    assert all(torch.equal(a, b) for a, b in zip(spy.weights, averaged))  # evaluated with the EMA
    assert all(torch.equal(a, p) for a, p in zip(trained, model.parameters()))  # then put back


@pytest.mark.slow
def test_ema_teacher_and_ema_evaluation_reduce_forgetting_on_split_digits():
    from ckd.distillation.parts.weight_averaging import EMAEvaluationPlugin

    naive, _ = _final_accuracy([])
    online, _ = _final_accuracy([KDReplayPlugin(mem_size=100, teacher="ema"), EMAEvaluationPlugin()])
    assert online - naive > 0.5


def test_a_plugin_reused_for_a_second_run_is_refused(digits):
    kd = KDReplayPlugin(mem_size=50)
    strategy = _strategy(_mlp(), [kd], epochs=1)
    _train(strategy, digits, experiences={0})
    _train(strategy, digits, experiences={1})  # the same strategy goes on: fine
    with pytest.raises(RuntimeError, match="this KDReplayPlugin already trained with another strategy and keeps its "
                                           r"buffer and teacher: give each strategy \(each run\) its own KDReplayPlugin"):
        _train(_strategy(_mlp(), [kd], epochs=1), digits, experiences={0})
