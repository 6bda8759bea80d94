import json
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from ckd.benchmarking.methods import METHOD_DEFAULTS
from ckd.benchmarking.run_config import RunConfig, lock_path
from ckd.benchmarking.runner import run
from ckd.benchmarking.scheduling import run_all
from ckd.benchmarking.vectorized_runs import (
    VectorizedScheduler,
    check_vectorizable,
    run_vectorized,
    run_vectorized_to_files,
)
from ckd.data.models import mlp, small_cnn
from ckd.distillation.losses import soft_kl
from ckd.engines.stacked_kd import summed_loss
from ckd.engines.stacked_model import StackedModel
from lock_holder import hold_finished_run

SEEDS = (0, 1, 2)


def _configs(method, seeds=SEEDS, **fields):
    fields = {"epochs": 1, "max_train_per_experience": 120, **fields}
    return [RunConfig("split-digits", method, seed=s, **fields) for s in seeds]


def _cases():
    # Each run is scored with the stream's EMA of the weights (the default) unless it says 0.
    off = {"eval_ema_half_life": 0.0}
    cases = [("naive", {}, {}), ("naive", {}, off), ("kd-replay", {}, {}), ("kd-replay", {}, off),
             ("kd-replay-cached", {}, off),
             ("kd-replay", {"policy": "class_balanced", "teacher": "cached"}, off), ("kd-replay", {"teacher": "own"}, off),
             ("kd-replay", {"policy": "class_balanced", "alpha": [0.0, 1.0, 2.0, 1.0, 0.5]}, off)]
    if "kd-ema" in METHOD_DEFAULTS:
        cases.append(("kd-ema", {}, {}))
    return [pytest.param(m, a, f, id=f"{m}-{'-'.join(map(str, [*a.values(), *f.values()])) or 'defaults'}")
            for m, a, f in cases]


@pytest.mark.parametrize("method,args,fields", _cases())
def test_each_seed_matches_its_sequential_run(method, args, fields):
    configs = _configs(method, method_args=args, **fields)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        together = run_vectorized(configs)
        alone = [run(c) for c in configs]
    matrices = []
    for v, s in zip(together, alone):
        assert v["seed"] == s["seed"] and v["vectorized"] is True and v["config"] == s["config"]
        assert v["scored_model"] == s["scored_model"] == ("model" if fields else "ema")
        # The batched kernels round differently: a few test samples may flip, no more.
        pairs = [(v["accuracy_matrix"], s["accuracy_matrix"])]
        if not fields:  # the trained weights are scored too
            pairs.append((v["trained_weights"]["accuracy_matrix"], s["trained_weights"]["accuracy_matrix"]))
        for got, expected in pairs:
            flat = [a for row in got for a in row]
            assert flat == pytest.approx([a for row in expected for a in row], abs=0.01)
        matrices.append(v["accuracy_matrix"])
    assert matrices[0] != matrices[1] != matrices[2]  # each seed trained its own model


def test_the_record_has_the_sequential_fields_and_the_vectorized_marks():
    configs = _configs("naive", seeds=(3, 4), max_train_per_experience=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vectorized = run_vectorized(configs)[0]
        sequential = run(configs[0])
    assert set(vectorized) - set(sequential) == {"vectorized", "vectorized_seeds", "vectorized_wall_time_s"}
    assert set(sequential) <= set(vectorized)
    assert vectorized["vectorized_seeds"] == [3, 4]
    assert vectorized["wall_time_s"] == pytest.approx(vectorized["vectorized_wall_time_s"] / 2)
    json.dumps(vectorized, allow_nan=False)


def test_results_go_to_the_per_seed_files_and_existing_ones_are_kept(tmp_path):
    configs = _configs("naive", seeds=(0, 1), max_train_per_experience=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = run_vectorized_to_files(configs, tmp_path)
        again = run_vectorized_to_files(configs, tmp_path)
    assert [p.name for p, _ in first] == ["split-digits__naive__seed0.json", "split-digits__naive__seed1.json"]
    assert [ran for _, ran in first] == [True, True] and [ran for _, ran in again] == [False, False]
    assert json.loads(first[1][0].read_text())["vectorized"] is True


@pytest.mark.parametrize(
    "configs,message",
    [
        (_configs("lwf"), "method 'lwf' cannot be vectorized"),
        (_configs("naive", loader="avalanche"), "vectorize needs loader='tensor'"),
        (_configs("kd-replay", method_args={"n_teachers": 2}), "vectorize needs n_teachers=1"),
        (_configs("naive", eval_every=5), "vectorize needs eval_every=0"),
        (_configs("naive", seeds=(1, 1)), "distinct seeds"),
        (_configs("naive", seeds=(0,)) + _configs("naive", seeds=(1,), lr=0.5), "differ only in their seed"),
    ],
    ids=["method", "loader", "setting", "eval-every", "seeds", "other-field"],
)
def test_what_cannot_be_vectorized_is_refused_in_one_line(configs, message):
    with pytest.raises(ValueError, match=message) as err:
        check_vectorizable(configs)
    assert "\n" not in str(err.value)


def test_seeds_whose_streams_differ_in_size_are_refused():
    # With a 20 % validation split, seeds 0 and 2 keep 202 and 201 samples of experience 0.
    configs = [RunConfig("split-digits", "naive", seed=s, epochs=1, validation_fraction=0.2) for s in (0, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="differ in size"):
            run_vectorized(configs)


@pytest.mark.parametrize("make", [lambda: mlp((1, 8, 8), 10), lambda: small_cnn((1, 8, 8), 10, width=4)])
def test_the_stacked_model_is_each_model_on_its_own_rows(make):
    torch.manual_seed(0)
    models = [make() for _ in range(3)]
    stacked = StackedModel(models)
    x = torch.rand(3, 5, 1, 8, 8)
    out = stacked(x)
    assert out.shape == (3, 5, 10)
    for s, model in enumerate(models):
        assert torch.allclose(out[s], model(x[s]), atol=1e-6)
        assert torch.allclose(stacked.seed_forward(s, x[s]), model(x[s]), atol=1e-6)
    with pytest.raises(ValueError, match="without buffers or dropout"):
        StackedModel([torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(64))])


def test_the_cli_and_a_suite_vectorize_on_request(tmp_path, capsys):
    from ckd.cli import main

    out = tmp_path / "run"
    argv = ["run", "--stream", "split-digits", "--method", "naive", "--seeds", "0", "1", "--epochs", "1", "--quiet"]
    assert main(argv + ["--vectorize", "--out", str(out)]) == 0
    assert [json.loads((out / f"split-digits__naive__seed{s}.json").read_text())["vectorized"] for s in (0, 1)] == [True, True]
    suite = tmp_path / "suite.toml"
    suite.write_text('[suite]\nseeds = [0, 1]\nvectorize = true\n[defaults]\nstream = "split-digits"\nepochs = 1\n'
                     '[[run]]\nmethod = "naive"\n')
    assert main(["suite", str(suite), "--out", str(tmp_path / "suite"), "--quiet"]) == 0
    assert json.loads((tmp_path / "suite" / "split-digits__naive__seed1.json").read_text())["vectorized"] is True
    capsys.readouterr()
    assert main(["run", "--stream", "split-digits", "--method", "lwf", "--vectorize", "--out", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().startswith("ckd: error: method 'lwf' cannot be vectorized")


def test_the_plain_stacked_mlp_matches_vmap_and_its_weight_gradients_are_contiguous():
    torch.manual_seed(0)
    models = [mlp((1, 8, 8), 10) for _ in range(3)]
    plain, mapped = StackedModel(models), StackedModel(models)
    mapped.layers = None
    assert plain.layers is not None
    x, y = torch.rand(3, 5, 1, 8, 8), torch.randint(0, 10, (3, 5))
    outs, grads = [], []
    for net in (plain, mapped):
        out = net(x)
        loss = F.cross_entropy(out.reshape(-1, 10), y.reshape(-1), reduction="sum")
        # autograd.grad, not .grad: backward() would clone a strided gradient into the weight's layout.
        grads.append(torch.autograd.grad(loss, net.tensors))
        outs.append(out.detach())
    # bmm in a transposed layout and vmap of addmm round differently: allclose, not equal.
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-5)
    for name, g_plain, g_mapped in zip(plain.names, *grads):
        assert g_plain.is_contiguous(), name
        torch.testing.assert_close(g_plain, g_mapped, atol=1e-6, rtol=1e-5)
        assert g_plain.abs().sum() > 0


def test_a_stacked_cnn_runs_through_vmap():
    torch.manual_seed(0)
    models = [small_cnn((1, 8, 8), 10, width=4) for _ in range(3)]
    net = StackedModel(models)
    assert net.layers is None
    x = torch.rand(3, 4, 1, 8, 8)
    out = net(x)
    out.sum().backward()
    assert out.shape == (3, 4, 10) and torch.allclose(out[1], models[1](x[1]), atol=1e-6)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.stacked)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
@pytest.mark.parametrize("beta", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("masked", [False, True], ids=["all-known", "masked-grown-head"])
def test_summed_loss_gradient_is_that_of_the_seeds_sequential_losses(alpha, beta, masked):
    torch.manual_seed(4)
    seeds, n, replayed, classes, temperature = 3, 8, 5, 7, 2.0
    out = torch.randn(seeds, n + replayed, classes, requires_grad=True)
    y, replay_y = torch.randint(0, classes, (seeds, n)), torch.randint(0, classes, (seeds, replayed))
    width = classes - 2 if masked else classes  # a head that grew since the teacher
    target = torch.randn(seeds, replayed, width) * 2
    mask = torch.rand(seeds, replayed, width) > 0.3 if masked else None
    loss, kd = summed_loss(out, y, replay_y, target, mask, alpha, beta, temperature)
    (grad,) = torch.autograd.grad(loss, out)

    kd_terms = [soft_kl(out[s, n:], target[s], temperature, None if mask is None else mask[s]) for s in range(seeds)]
    sequential = sum(
        F.cross_entropy(out[s, :n], y[s]) + alpha * kd_terms[s] + beta * F.cross_entropy(out[s, n:], replay_y[s])
        for s in range(seeds)
    )
    (expected,) = torch.autograd.grad(sequential, out)
    # One weighted cross-entropy over all rows and one KL sum: float32 rounding apart, not bit for bit.
    torch.testing.assert_close(grad, expected, atol=1e-7, rtol=1e-5)
    assert loss.item() == pytest.approx(sequential.item(), rel=1e-5)
    assert kd.item() == pytest.approx(sum(kd_terms).item(), rel=1e-5)
    if masked:
        assert bool(torch.all(grad[:, n:, width:] == 0)) == (beta == 0)  # only the replay cross-entropy reaches them


def test_a_vectorized_pass_that_fails_is_recorded_as_every_other_schedulers_failures(tmp_path, monkeypatch):
    """The vectorized scheduler's failed pass: one failed outcome per seed, in failures.json, RunsFailed at the end."""
    import ckd.benchmarking.vectorized_runs as vectorized_runs
    from ckd.benchmarking.orchestration import Plan, run_plan
    from ckd.benchmarking.scheduling import FAILURES_FILE
    from ckd.common.errors import RunsFailed

    def broken(configs, data_root=None, progress=False):
        raise RuntimeError("the stacked pass broke")

    monkeypatch.setattr(vectorized_runs, "run_vectorized", broken)
    configs = [RunConfig("split-digits", "naive", seed=s, epochs=1) for s in (0, 1)]
    seen = []
    with pytest.raises(RunsFailed):
        run_plan(Plan(configs, tmp_path, vectorize=True), seen.append)
    assert [(o.config.seed, o.ok, o.error) for o in seen] == [(0, False, "RuntimeError: the stacked pass broke"),
                                                               (1, False, "RuntimeError: the stacked pass broke")]
    failures = json.loads((tmp_path / FAILURES_FILE).read_text())
    assert sorted(failures) == ["split-digits__naive__seed0.json", "split-digits__naive__seed1.json"]
    assert "the stacked pass broke" in failures["split-digits__naive__seed0.json"]["traceback"]


@pytest.mark.skipif(sys.platform == "win32", reason="no advisory locks on Windows")
def test_a_pass_waits_for_a_seed_another_process_runs_and_keeps_its_result(tmp_path, capsys):
    configs = _configs("naive", seeds=(0, 1), max_train_per_experience=30)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ((path, _),) = run_vectorized_to_files(configs[:1], out)
        holder, saved = hold_finished_run(path, lock_path(out, configs[0]))
        try:
            outcomes = run_all(VectorizedScheduler(), configs, out)
        finally:
            holder.wait()
    assert [(o.config.seed, o.ran) for o in outcomes] == [(0, False), (1, True)]
    assert path.read_bytes() == saved.read_bytes()  # the other process's result, kept
    assert "waiting for split-digits__naive__seed0.json" in capsys.readouterr().err
    assert not list(out.glob("*.lock"))
