import warnings

import pytest
import torch
from avalanche.core import SupervisedPlugin

from ckd.benchmarking.run_config import RunConfig
from ckd.benchmarking.runner import run
from ckd.benchmarking.vectorized_runs import check_vectorizable, run_vectorized
from ckd.data.streams import make_stream
from ckd.engines.tensor_data import dataset_tensors
from ckd.engines.vectorized_replay import StackedExperienceReplay
from recording import run_with_plugin

SEEDS = (0, 1, 2)


def _configs(seeds=SEEDS, **fields):
    fields = {"epochs": 1, "max_train_per_experience": 120, **fields}
    return [RunConfig("split-digits", "replay", seed=s, **fields) for s in seeds]


class _Minibatches(SupervisedPlugin):
    """Every minibatch the strategy trains on, as it reaches the model."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[torch.Tensor]] = []

    def before_forward(self, strategy, **kwargs) -> None:
        self.seen.append([t.clone() for t in strategy.mbatch])


def _sequential_minibatches(config, monkeypatch) -> list[list[torch.Tensor]]:
    """The minibatches of ``ckd.benchmarking.runner.run(config)``, recorded by a plugin added to its strategy."""
    recorder = _Minibatches()
    run_with_plugin(config, recorder, monkeypatch)
    return recorder.seen


@pytest.mark.parametrize("policy", ["reservoir", "experience_balanced"])
def test_the_batches_are_the_minibatches_of_the_sequential_run(policy, monkeypatch):
    # 45 rows in batches of 10 (the last one short), a memory of 25 in batches of 10 that
    # runs out within an epoch, two epochs: every draw the replay loader makes.
    args = {"mem_size": 25, "replay_batch_size": 10, "policy": policy}
    config = _configs(seeds=(1,), epochs=2, max_train_per_experience=45, method_args=args)[0]
    recorded = _sequential_minibatches(config, monkeypatch)
    stream = make_stream("split-digits", seed=1, max_train_per_experience=45)
    replay = StackedExperienceReplay.from_args(args, [1], batch_size=config.batch_size, epochs=2, device="cpu")
    yielded = []
    for i, experience in enumerate(stream.benchmark.train_stream):
        data = [dataset_tensors(experience.dataset.train())]
        yielded += [[x[0], y[0], t[0]] for x, y, t in replay.batches(i, data)]
        replay.after_experience(data)
    assert len(yielded) == len(recorded) == 5 * 2 * 5
    assert [len(b[1]) for b in yielded[10:15]] == [20, 20, 15, 20, 15]  # the memory ran out after 3 batches
    for ours, theirs in zip(yielded, recorded):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert replay.memory(0)[0].shape[0] == 25


@pytest.mark.parametrize("policy", ["reservoir", "experience_balanced"])
def test_each_seed_matches_its_sequential_run(policy):
    configs = _configs(method_args={"policy": policy})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        together = run_vectorized(configs)
        alone = [run(c) for c in configs]
    for v, s in zip(together, alone):
        assert v["seed"] == s["seed"] and v["vectorized"] is True and v["config"] == s["config"]
        flat = [a for row in v["accuracy_matrix"] for a in row]
        assert flat == pytest.approx([a for row in s["accuracy_matrix"] for a in row], abs=0.01)
    assert together[0]["accuracy_matrix"] != together[1]["accuracy_matrix"] != together[2]["accuracy_matrix"]


def test_an_unknown_replay_policy_is_refused_in_one_line():
    with pytest.raises(ValueError, match="replay policies .* got policy='class_balanced'") as err:
        check_vectorizable(_configs(method_args={"policy": "class_balanced"}))
    assert "\n" not in str(err.value)


def test_seeds_whose_experiences_differ_in_size_are_refused_in_one_line():
    replay = StackedExperienceReplay([0, 1], mem_size=5, replay_batch_size=2, policy="reservoir", batch_size=4, epochs=1)
    rows = [(torch.zeros(n, 3), torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)) for n in (8, 7)]
    with pytest.raises(ValueError, match=r"sizes differ \[\(7, 0\), \(8, 0\)\] at experience 0") as err:
        replay.batches(0, rows)
    assert "\n" not in str(err.value)
