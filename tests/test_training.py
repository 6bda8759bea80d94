import warnings

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from torch.utils.data import DataLoader

from ckd.benchmarking.methods import TrainSettings, make_strategy, resolve_method_args
from ckd.benchmarking.scoring import AccuracyEvaluator
from ckd.data.models import mlp
from ckd.data.streams import make_stream
from ckd.engines.tensor_data import TensorBatches, dataset_tensors
from ckd.engines.training import TensorNaive
from host_sync import forbid_host_syncs


@pytest.fixture(scope="module")
def digits():
    return make_stream("split-digits", seed=0)


def _loader_items(dataset):
    batches = list(DataLoader(dataset, batch_size=1000, shuffle=False))
    return tuple(torch.cat([b[k] for b in batches]) for k in range(3))


def test_dataset_tensors_are_the_items_the_dataloader_reads(digits):
    dataset = digits.benchmark.train_stream[2].dataset.train()
    x, y, task = dataset_tensors(dataset)
    ref_x, ref_y, ref_task = _loader_items(dataset)
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y) and torch.equal(task, ref_task)
    assert set(y.tolist()) == {4, 5}
    # A subset and a concatenation are read through their indices.
    subset = dataset.subset([7, 3, 3, 0])
    sx, sy, _ = dataset_tensors(subset)
    assert torch.equal(sx, x[[7, 3, 3, 0]]) and torch.equal(sy, y[[7, 3, 3, 0]])
    both = digits.benchmark.train_stream[0].dataset.concat(dataset)
    bx, by, _ = dataset_tensors(both)
    assert torch.equal(bx, _loader_items(both)[0]) and by.shape[0] == len(both)


def test_dataset_tensors_refuse_what_is_not_plain_tensor_rows(digits):
    dataset = digits.benchmark.train_stream[0].dataset.train()
    assert dataset_tensors(dataset.replace_current_transform_group(lambda x: x + 1)) is None
    tasks = make_stream("split-digits", seed=0, task_labels=True).benchmark.train_stream
    assert dataset_tensors(tasks[0].dataset.concat(tasks[1].dataset)) is None  # two task labels
    assert dataset_tensors(torch.utils.data.TensorDataset(torch.zeros(3, 2))) is None


def test_tensor_batches_cover_every_row_once_per_pass_in_a_seeded_order():
    x = torch.arange(23.0).unsqueeze(1)
    y, task = torch.arange(23), torch.zeros(23, dtype=torch.long)

    def passes(seed, n=2):
        batches = TensorBatches(x, y, task, batch_size=5, generator=torch.Generator().manual_seed(seed))
        return [torch.cat([b[1] for b in batches]) for _ in range(n)]

    first, second = passes(0)
    assert sorted(first.tolist()) == list(range(23)) and sorted(second.tolist()) == list(range(23))
    assert not torch.equal(first, second)  # a new order each pass
    assert all(torch.equal(a, b) for a, b in zip(passes(0), [first, second]))
    assert not torch.equal(passes(1)[0], first)
    ordered = TensorBatches(x, y, task, batch_size=5, shuffle=False)
    assert [b[1].tolist() for b in ordered][-1] == [20, 21, 22] and len(ordered) == 5
    dropped = TensorBatches(x, y, task, batch_size=5, shuffle=False, drop_last=True)
    assert len(list(dropped)) == len(dropped) == 4
    with pytest.raises(ValueError, match="generator"):
        TensorBatches(x, y, task, batch_size=5)


def test_tensor_batches_do_not_sync():
    x = torch.randn(40, 3)
    batches = TensorBatches(x, torch.arange(40), torch.zeros(40, dtype=torch.long), batch_size=8,
                            generator=torch.Generator().manual_seed(0))
    with forbid_host_syncs():
        n = sum(1 for _ in batches)
    assert n == 5


class _Recorder(SupervisedPlugin):
    """Records every training hook it sees, with the minibatch's labels."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, tuple[int, ...]]] = []

    def __getattribute__(self, name):
        attr = super().__getattribute__(name)
        if name.startswith(("before_", "after_")) and "eval" not in name:
            def record(strategy, **kwargs):
                y = strategy.mbatch[1] if strategy.mbatch is not None else torch.zeros(0)
                self.events.append((name, tuple(y.tolist())))
                return attr(strategy, **kwargs)
            return record
        return attr


def _train(method, stream, fast, plugins=(), evaluator=None):
    """Both paths, in order (``shuffle=False``): the accuracy matrix and the final parameters."""
    torch.manual_seed(0)
    model = mlp(stream.input_shape, stream.n_classes)
    settings = TrainSettings(lr=0.05, batch_size=10, epochs=2, eval_batch_size=500, device="cpu")
    args = resolve_method_args(method)
    if "mem_size" in args:
        args["mem_size"] = 60
    strategy = make_strategy(method, model, settings, args, extra_plugins=list(plugins), fast=fast)
    if evaluator is not None:
        strategy.plugins[strategy.plugins.index(strategy.evaluator)] = evaluator
        strategy.evaluator = evaluator
    scorer = AccuracyEvaluator(stream, torch.device("cpu"), 500)
    matrix = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "joint":
            strategy.train(stream.benchmark.train_stream, shuffle=False)
            matrix.append(scorer.accuracies(model)[0])
        else:
            for i, experience in enumerate(stream.benchmark.train_stream):
                torch.manual_seed(100 + i)
                strategy.train(experience, shuffle=False)
                matrix.append(scorer.accuracies(model)[0])
    return matrix, torch.cat([p.detach().flatten() for p in model.parameters()]), strategy


@pytest.mark.parametrize(
    "method",
    ["naive", "joint", "replay", "der", "der-authors", "er-ace", "ewc", "lwf", "kd-replay", "kd-replay-cached", "kd-relation"],
)
def test_both_paths_give_identical_results_given_the_same_batches(method):
    stream = make_stream("split-digits", seed=0, max_train_per_experience=80)
    slow_matrix, slow_params, slow = _train(method, stream, fast=False)
    fast_matrix, fast_params, fast = _train(method, stream, fast=True)
    assert fast_matrix == slow_matrix
    assert torch.equal(fast_params, slow_params)
    assert type(fast).__name__.startswith("Tensor") and not type(slow).__name__.startswith("Tensor")


def test_plugins_see_the_same_hooks_and_batches_and_the_evaluator_none(digits):
    class Counting(EvaluationPlugin):
        def __init__(self):
            super().__init__(loggers=[])
            self.training_calls = 0

        def before_training_iteration(self, strategy, **kwargs):
            self.training_calls += 1

    stream = make_stream("split-digits", seed=0, max_train_per_experience=30)
    slow_rec, fast_rec = _Recorder(), _Recorder()
    slow_eval, fast_eval = Counting(), Counting()
    _train("kd-replay", stream, fast=False, plugins=[slow_rec], evaluator=slow_eval)
    _train("kd-replay", stream, fast=True, plugins=[fast_rec], evaluator=fast_eval)
    assert fast_rec.events == slow_rec.events
    assert sum(e[0] == "before_forward" for e in fast_rec.events) == 5 * 2 * 3  # experiences x epochs x batches
    assert slow_eval.training_calls == 30 and fast_eval.training_calls == 0


class _Loaders(SupervisedPlugin):
    """The loader of every training epoch, by type name."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def before_training_epoch(self, strategy, **kwargs):
        self.seen.append(type(strategy.dataloader).__name__)


def test_avalanche_replay_loader_is_read_from_tensors():
    loaders = _Loaders()
    _, _, strategy = _train("replay", make_stream("split-digits", seed=0, max_train_per_experience=30),
                            fast=True, plugins=[loaders])
    assert isinstance(strategy, TensorNaive)
    # Experience 0 in Avalanche's order too; then the ReplayPlugin's ReplayDataLoader, from tensors.
    assert loaders.seen == ["ReplayBatches"] * 10


def test_a_plugin_that_replaces_the_loader_keeps_its_own():
    class OwnLoader(SupervisedPlugin):
        def before_training_exp(self, strategy, **kwargs):
            strategy.dataloader = DataLoader(strategy.adapted_dataset, batch_size=10)

    loaders = _Loaders()
    _train("naive", make_stream("split-digits", seed=0, max_train_per_experience=30), fast=True,
           plugins=[OwnLoader(), loaders])
    assert loaders.seen == ["DataLoader"] * 10
