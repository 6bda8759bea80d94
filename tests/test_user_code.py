"""Tests for ``ckd.data.user_code``: a user's stream and model named ``package.module:function``
go through ``ckd run``, ``ckd summary`` and ``ckd plot`` like the built-in ones."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from ckd.benchmarking.run_config import RunConfig
from ckd.benchmarking.runner import run
from ckd.cli import main
from ckd.data.streams import make_stream
from ckd.data.user_code import call_with_accepted, is_reference, load_callable

USER_MODULE = textwrap.dedent("""
    import torch
    from avalanche.benchmarks import nc_benchmark
    from torch import nn
    from torch.utils.data import TensorDataset


    class Rows(TensorDataset):
        def __init__(self, x, y):
            super().__init__(x, y)
            self.targets = y.tolist()


    def blobs(seed, n_experiences=3):
        '''Six Gaussian blobs in 8 dimensions, two classes per experience.'''
        g = torch.Generator().manual_seed(100 + seed)
        centres = 3 * torch.randn(6, 8, generator=g)
        y = torch.arange(6).repeat(40)
        x = centres[y] + torch.randn(len(y), 8, generator=g)
        train, test = Rows(x[:180], y[:180]), Rows(x[180:], y[180:])
        return nc_benchmark(train, test, n_experiences, task_labels=False, seed=0,
                            fixed_class_order=list(range(6)))


    def small_net(input_shape, n_classes):
        return nn.Sequential(nn.Linear(input_shape[0], 32), nn.ReLU(), nn.Linear(32, n_classes))
""")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_cl.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_cl"
    sys.modules.pop("my_cl", None)


def test_references_and_their_errors():
    assert is_reference("pkg.mod:fn") and is_reference("pkg:Cls.method")
    assert not is_reference("split-mnist") and not is_reference(":fn") and not is_reference("pkg:")
    assert load_callable("json:dumps", "stream") is json.dumps
    with pytest.raises(ValueError, match="package.module:function"):
        load_callable("json.dumps", "stream")
    with pytest.raises(ValueError, match="not callable"):
        load_callable("json:__name__", "model")


def test_only_declared_arguments_are_passed():
    def f(seed, n_experiences=2):
        return seed, n_experiences

    assert call_with_accepted(f, "m:f", {"seed": 1, "n_experiences": 5}) == (1, 5)
    assert call_with_accepted(f, "m:f", {"seed": 1, "data_root": "x"}, {"data_root": "x"}) == (1, 2)
    with pytest.raises(ValueError, match="m:f takes no argument 'task_labels'"):
        call_with_accepted(f, "m:f", {"seed": 1, "task_labels": True}, {"task_labels": False})
    assert call_with_accepted(lambda **kw: kw, "m:g", {"a": 1}, {}) == {"a": 1}


def test_user_stream_and_model_through_run_summary_and_plot(user_module, tmp_path, capsys):
    out, figures = tmp_path / "results", tmp_path / "figures"
    code = main([
        "run", "--stream", f"{user_module}:blobs", "--model", f"{user_module}:small_net", "--method", "naive",
        "kd-replay", "--seeds", "0", "1", "--epochs", "2", "--lr", "0.05", "--batch-size", "16", "--mem-size", "60",
        "--out", str(out), "--quiet",
    ])
    assert code == 0, capsys.readouterr().err
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert len(results) == 4 and {r["stream"] for r in results} == {"my_cl:blobs"}
    assert sorted(p.name for p in out.glob("*.json"))[0] == "my_cl_blobs__kd-replay__seed0.json"
    for r in results:
        assert r["config"]["model"] == "my_cl:small_net" and r["experience_classes"] == [[0, 1], [2, 3], [4, 5]]
        assert len(r["accuracy_matrix"]) == 3 and r["scenario"] == "class-il"
    # the blobs are separable: the first experience is learned (chance is 1/6 over all classes)
    assert all(r["accuracy_matrix"][0][0] > 0.9 for r in results)
    assert main(["summary", str(out)]) == 0
    assert "my_cl:blobs" in capsys.readouterr().out
    assert main(["plot", str(out), "--out", str(figures)]) == 0
    assert any(figures.glob("*.png"))


def test_user_stream_needs_its_training_settings(user_module, tmp_path, capsys):
    code = main(["run", "--stream", f"{user_module}:blobs", "--method", "naive", "--out", str(tmp_path)])
    assert code == 2
    assert "give epochs, lr, batch_size" in capsys.readouterr().err


# Benchmarks built the ways Avalanche 0.6's public API offers, as a user's module would build them.
FORMS_MODULE = textwrap.dedent("""
    import numpy as np
    import torch
    from avalanche.benchmarks import benchmark_from_datasets, nc_benchmark, ni_benchmark, with_classes_timeline
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.benchmarks.utils import as_classification_dataset
    from PIL import Image
    from torch import nn
    from torch.utils.data import Dataset, TensorDataset
    from torchvision import transforms


    def rows(n, classes, seed=0, task=None):
        '''(x, y) samples, or (x, y, task) with a task, of Gaussian blobs around one-hot centres.'''
        g = torch.Generator().manual_seed(seed)
        y = torch.tensor(classes).repeat(n // len(classes))
        x = torch.randn(len(y), 6, generator=g) + 3 * nn.functional.one_hot(y, 6).float()
        data = TensorDataset(x, y) if task is None else TensorDataset(x, y, torch.full_like(y, task))
        data.targets = y.tolist()
        return as_classification_dataset(data)


    class Images(Dataset):
        '''8x8 grey PIL images whose brightness gives the class.'''

        def __init__(self, n, seed=0):
            rng = np.random.default_rng(seed)
            self.targets = [i % 4 for i in range(n)]
            self.images = [Image.fromarray((rng.random((8, 8)) * 60 + 50 * t).astype(np.uint8)) for t in self.targets]

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i], self.targets[i]


    def make():
        return class_incremental_benchmark({"train": rows(200, [0, 1, 2, 3]), "test": rows(80, [0, 1, 2, 3], 1)},
                                           num_experiences=2)


    def from_datasets():
        return benchmark_from_datasets(train=[rows(80, [0, 1]), rows(80, [2, 3], 1)],
                                       test=[rows(20, [0, 1], 2), rows(20, [2, 3], 3)])


    def timeline():
        return with_classes_timeline(from_datasets())


    def task_aware():
        return nc_benchmark(rows(160, [0, 1, 2, 3]), rows(40, [0, 1, 2, 3], 1), 2, task_labels=True, seed=0,
                            fixed_class_order=[0, 1, 2, 3])


    def task_in_samples():
        return benchmark_from_datasets(train=[rows(80, [0, 1], task=0), rows(80, [2, 3], 1, task=1)],
                                       test=[rows(20, [0, 1], 2, task=0), rows(20, [2, 3], 3, task=1)])


    def images():
        flip = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor()])
        return nc_benchmark(Images(160), Images(40, 1), 2, task_labels=False, seed=0, fixed_class_order=[0, 1, 2, 3],
                            train_transform=flip, eval_transform=transforms.ToTensor())


    def images_without_transform():
        return nc_benchmark(Images(160), Images(40, 1), 2, task_labels=False, seed=0, fixed_class_order=[0, 1, 2, 3])


    def new_instances():
        return ni_benchmark(rows(160, [0, 1, 2, 3]), rows(40, [0, 1, 2, 3], 1), 2, seed=0)


    def empty_experience():
        return benchmark_from_datasets(train=[rows(80, [0, 1]), rows(80, [2, 3]).subset([])],
                                       test=[rows(20, [0, 1]), rows(20, [2, 3])])


    def mixed_tasks():
        both = rows(40, [0, 1], task=0).concat(rows(40, [2, 3], task=1))
        return benchmark_from_datasets(train=[both], test=[both])


    def net(input_shape, n_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 32), nn.ReLU(), nn.Linear(32, n_classes))
""")


@pytest.fixture
def forms_module(tmp_path, monkeypatch):
    (tmp_path / "my_forms.py").write_text(FORMS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_forms"
    sys.modules.pop("my_forms", None)


def test_class_incremental_benchmark_through_run_summary_and_plot(forms_module, tmp_path, capsys):
    out, figures = tmp_path / "results", tmp_path / "figures"
    code = main([
        "run", "--stream", f"{forms_module}:make", "--model", f"{forms_module}:net", "--method", "naive", "kd-replay",
        "--epochs", "2", "--lr", "0.1", "--batch-size", "16", "--out", str(out), "--quiet",
    ])
    assert code == 0, capsys.readouterr().err
    results = {r["method"]: r for r in (json.loads(p.read_text()) for p in out.glob("*.json"))}
    assert set(results) == {"naive", "kd-replay"}
    for r in results.values():
        assert r["scenario"] == "class-il" and r["experience_classes"] == [[0, 1], [2, 3]]
        assert r["accuracy_matrix"][0][0] > 0.8  # the blobs are separable
    assert results["kd-replay"]["diagnostics"][1]["agreement"] is not None
    assert main(["summary", str(out)]) == 0
    assert f"{forms_module}:make" in capsys.readouterr().out
    assert main(["plot", str(out), "--out", str(figures)]) == 0
    assert any(figures.glob("*.png"))


@pytest.mark.parametrize(
    ("function", "scenario", "input_shape"),
    [
        ("from_datasets", "class-il", [6]),  # experiences without classes_in_this_experience
        ("timeline", "class-il", [6]),
        ("task_aware", "task-il", [6]),  # (x, y, task) with Avalanche's task labels
        ("task_in_samples", "task-il", [6]),  # (x, y, task) from the user's own samples
        ("images", "class-il", [1, 8, 8]),  # PIL images with a training augmentation
    ],
)
@pytest.mark.parametrize("loader", ["tensor", "avalanche"])
def test_avalanche_benchmark_forms_run(forms_module, function, scenario, input_shape, loader):
    for method in ("kd-replay", "kd-lwf"):
        config = RunConfig(f"{forms_module}:{function}", method, model=f"{forms_module}:net", epochs=1, lr=0.1,
                           batch_size=16, loader=loader)
        result = run(config)
        assert result["scenario"] == scenario and result["experience_classes"] == [[0, 1], [2, 3]]
        assert len(result["accuracy_matrix"]) == 2 and result["diagnostics"][1] is not None
    stream = make_stream(f"{forms_module}:{function}")
    assert list(stream.input_shape) == input_shape
    x, y, task = stream.test_tensors(1)
    assert x.shape[1:] == tuple(input_shape) and set(y.tolist()) == {2, 3}
    assert set(task.tolist()) == ({1} if scenario == "task-il" else {0})


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("images_without_transform", "training experience 0 yields inputs of type Image, not tensors: give its dataset "
                                     "a transform that makes tensors"),
        ("new_instances", "2 training experiences but 1 test experience(s); ckd scores every training experience"),
        ("empty_experience", "training experience 1 has no samples"),
        ("mixed_tasks", "training experience 0 holds task labels [0, 1]; ckd needs one task label per experience"),
    ],
)
def test_benchmarks_a_run_cannot_use_are_refused_in_one_line(forms_module, function, message, tmp_path, capsys):
    code = main([
        "run", "--stream", f"{forms_module}:{function}", "--model", f"{forms_module}:net", "--method", "naive",
        "--epochs", "1", "--lr", "0.1", "--batch-size", "16", "--out", str(tmp_path), "--quiet",
    ])
    assert code == 2
    line = next(ln for ln in capsys.readouterr().err.splitlines() if f"{forms_module}:{function} naive" in ln)
    assert f"stream '{forms_module}:{function}': {message}" in line
