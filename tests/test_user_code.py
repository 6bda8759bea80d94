"""Tests for ``ckd.user_code``: a user's stream and model named ``package.module:function``
go through ``ckd run``, ``ckd summary`` and ``ckd plot`` like the built-in ones."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from ckd.cli import main
from ckd.user_code import call_with_accepted, is_reference, load_callable

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
