import dataclasses
import warnings

import pytest
import torch
from avalanche.benchmarks.utils.data_loader import ReplayDataLoader
from avalanche.core import SupervisedPlugin
from avalanche.training.utils import cycle
from torch.utils.data import DataLoader, TensorDataset

from ckd.benchmarking.methods import TrainSettings, make_strategy, resolve_method_args
from ckd.benchmarking.run_config import RunConfig
from ckd.benchmarking.runner import run
from ckd.data.models import mlp
from ckd.data.streams import make_stream
from ckd.engines.tensor_data import dataset_tensors
from ckd.engines.tensor_replay import CycledBatches, ReplayBatches, cycled_rows, replay_rows
from ckd.engines.training import TensorDER, TensorLogitBuffer
from recording import run_with_plugin


@pytest.fixture(scope="module")
def digits():
    return make_stream("split-digits", seed=0, max_train_per_experience=45)


def _same(ours, theirs) -> bool:
    return len(ours) == len(theirs) and all(
        len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b)) for a, b in zip(ours, theirs)
    )


@pytest.mark.parametrize("shuffle,drop_last", [(True, False), (True, True), (False, False)])
def test_replay_batches_are_avalanche_replay_loader_batches_with_the_same_draws(digits, shuffle, drop_last):
    # 45 rows in batches of 10 (the last one short), a memory of 23 in batches of 7 that runs
    # out within an epoch (its last batch short), two epochs of the same loader.
    data = digits.benchmark.train_stream[1].dataset.train()
    memory = digits.benchmark.train_stream[0].dataset.train().subset(range(2, 25))
    settings = dict(shuffle=shuffle, drop_last=drop_last)
    loader = ReplayDataLoader(data, memory, oversample_small_tasks=True, batch_size=10, batch_size_mem=7, **settings)
    torch.manual_seed(3)
    theirs = [batch for _ in range(2) for batch in loader]
    their_state = torch.get_rng_state()
    batches = ReplayBatches(dataset_tensors(data), dataset_tensors(memory), batch_size=10, replay_batch_size=7, **settings)
    torch.manual_seed(3)
    ours = [batch for _ in range(2) for batch in batches]
    assert len(batches) == len(loader) == (4 if drop_last else 5)
    assert _same(ours, theirs)
    assert torch.equal(torch.get_rng_state(), their_state)  # the same draws, nothing more
    assert [len(b[1]) for b in ours[: len(batches)]] == ([17] * 4 if drop_last else [17, 17, 17, 12, 12])


def test_replay_batches_without_memory_are_the_plain_dataloader_batches(digits):
    data = digits.benchmark.train_stream[2].dataset.train()
    torch.manual_seed(4)
    theirs = [batch for _ in range(2) for batch in DataLoader(data, batch_size=10, shuffle=True)]
    their_state = torch.get_rng_state()
    torch.manual_seed(4)
    batches = ReplayBatches(dataset_tensors(data), batch_size=10)
    ours = [batch for _ in range(2) for batch in batches]
    assert _same(ours, theirs) and torch.equal(torch.get_rng_state(), their_state)


def test_cycled_batches_are_der_replay_loader_batches_with_the_same_draws():
    # 23 rows in full batches of 5: four per pass, three rows left out, a new pass every fourth step.
    x, y = torch.randn(23, 3), torch.arange(23)
    torch.manual_seed(5)
    loader = cycle(DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True, drop_last=True))
    theirs = [next(loader) for _ in range(11)]
    their_state = torch.get_rng_state()
    torch.manual_seed(5)
    replay = CycledBatches([x, y], 5)
    ours = [next(replay) for _ in range(11)]
    assert _same(ours, theirs) and torch.equal(torch.get_rng_state(), their_state)
    assert len(set(torch.cat([b[1] for b in ours[:4]]).tolist())) == 20  # one pass: no row twice


def test_rows_are_lazy_and_refuse_a_memory_smaller_than_a_batch():
    state = torch.get_rng_state()
    rows = replay_rows(10, 4, 3, 2)
    cycled = cycled_rows(8, 4)
    assert torch.equal(torch.get_rng_state(), state)  # nothing is drawn before the first batch
    next(rows), next(cycled)
    assert not torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="batch_size=5 needs as many memory rows, got 4"):
        cycled_rows(4, 5)


def _der(stream, fast: bool, **args):
    torch.manual_seed(0)
    settings = TrainSettings(lr=0.05, batch_size=10, epochs=1, eval_batch_size=100, device="cpu")
    method_args = {**resolve_method_args("der"), "mem_size": 30, **args}
    strategy = make_strategy("der", mlp(stream.input_shape, stream.n_classes), settings, method_args, fast=fast)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, experience in enumerate(stream.benchmark.train_stream[:3]):
            torch.manual_seed(i)
            strategy.train(experience)
    return strategy


def test_der_buffer_is_read_as_tensors_with_its_logits(digits):
    avalanche, tensor = _der(digits, fast=False), _der(digits, fast=True)
    assert type(avalanche.storage_policy).__name__ == "ClassBalancedBufferWithLogits"
    assert isinstance(tensor, TensorDER) and isinstance(tensor.storage_policy, TensorLogitBuffer)
    buffer = avalanche.storage_policy.buffer
    items = next(iter(DataLoader(buffer, batch_size=len(buffer))))
    rows = dataset_tensors(buffer, "logits")  # Avalanche's buffer: logits as lists of rows
    assert len(items) == 4 and _same([rows], [items])
    assert _same([dataset_tensors(tensor.storage_policy.buffer, "logits")], [items])  # the same buffer
    assert dataset_tensors(buffer) is None  # an item attribute not asked for


class _Minibatches(SupervisedPlugin):
    """Every minibatch the model trains on (replayed rows included) and DER's replayed logits,
    with the loaders each epoch reads from."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[torch.Tensor]] = []
        self.loaders: list[tuple[str, str]] = []

    def before_training_epoch(self, strategy, **kwargs) -> None:
        self.loaders.append((type(strategy.dataloader).__name__, type(getattr(strategy, "replay_loader", None)).__name__))

    def after_forward(self, strategy, **kwargs) -> None:
        replaying = getattr(strategy, "replay_loader", None) is not None
        self.seen.append([t.clone() for t in strategy.mbatch] + ([strategy.batch_logits.clone()] if replaying else []))


def _minibatches(config, monkeypatch) -> _Minibatches:
    """The minibatches of ``ckd.benchmarking.runner.run(config)``, recorded by a plugin added to its strategy."""
    recorder = _Minibatches()
    run_with_plugin(config, recorder, monkeypatch)
    return recorder


_EXPECTED_LOADERS = {
    "replay": [("ReplayBatches", "NoneType")] * 10,
    "der": [("ReplayBatches", "NoneType")] * 2 + [("ReplayBatches", "CycledBatches")] * 8,
}


@pytest.mark.parametrize("method,args", [
    ("replay", {"policy": "reservoir", "mem_size": 25}),
    ("der", {"beta": 0.5, "mem_size": 25}),
])
def test_the_tensor_path_trains_on_the_minibatches_of_avalanche_loaders(method, args, monkeypatch):
    # A memory of 25 in batches of 10: ER's runs out within an epoch, DER's drops 5 rows a pass.
    config = RunConfig("split-digits", method, seed=1, epochs=2, max_train_per_experience=45, method_args=args)
    theirs = _minibatches(dataclasses.replace(config, loader="avalanche"), monkeypatch)
    ours = _minibatches(config, monkeypatch)
    assert ours.loaders == _EXPECTED_LOADERS[method]
    assert len(ours.seen) == 5 * 2 * 5 and _same(ours.seen, theirs.seen)
    assert len(ours.seen[10]) == (3 if method == "replay" else 4) and len(ours.seen[10][1]) == 20  # replayed rows


@pytest.mark.parametrize("method,args", [
    ("replay", {"policy": "reservoir"}),
    ("replay", {"policy": "experience_balanced"}),
    ("replay", {"policy": "class_balanced"}),
    ("der", {}),
    ("der", {"beta": 0.5}),  # DER++
])
def test_the_tensor_path_gives_the_accuracies_of_avalanche_loaders(method, args):
    configs = {loader: RunConfig("split-digits", method, seed=2, epochs=2, max_train_per_experience=200, loader=loader,
                                 method_args={**args, "mem_size": 60})
               for loader in ("tensor", "avalanche")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = {loader: run(config) for loader, config in configs.items()}
    assert results["tensor"]["accuracy_matrix"] == results["avalanche"]["accuracy_matrix"]
    assert results["tensor"]["final_average_accuracy"] > 0.4


def test_der_without_a_full_replay_batch_trains_on_the_experience_alone(digits):
    strategy = _der(digits, fast=True, mem_size=4)  # fewer rows than replay_batch_size: no replay, as Avalanche's
    reference = _der(digits, fast=False, mem_size=4)
    assert strategy.replay_loader is None and len(strategy.storage_policy.buffer) == 4
    assert all(torch.equal(a, b) for a, b in zip(strategy.model.parameters(), reference.model.parameters()))
