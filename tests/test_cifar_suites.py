"""The Seq-CIFAR-10 suites: the GPU suite holds the DER protocol and tuned baselines,
its CPU smoke version holds the same runs, and those runs go through on synthetic archives."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from ckd.benchmarking.runner import run, run_to_file
from ckd.benchmarking.suite import load_suite
from ckd.cli import main
from ckd.engines.augmentation import AugmentationPlugin

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
GPU_SUITE = BENCHMARKS / "der_seq_cifar10.toml"
SMOKE_SUITE = BENCHMARKS / "der_seq_cifar10_smoke.toml"

# The DER authors' tuned Seq-CIFAR-10 settings (their utils/best_args.py), typed in by hand:
# label -> (lr, alpha, beta); ER has no alpha/beta.
DER_TUNED = {
    "sgd": (0.1, None, None),
    "er@200": (0.1, None, None), "er@500": (0.1, None, None), "er@5120": (0.1, None, None),
    "der@200": (0.03, 0.3, 0.0), "der@500": (0.03, 0.3, 0.0), "der@5120": (0.03, 0.3, 0.0),
    "der++@200": (0.03, 0.1, 0.5), "der++@500": (0.03, 0.2, 0.5), "der++@5120": (0.03, 0.1, 1.0),
}


def _entries(configs):
    return {(c.method, c.name, c.lr, json.dumps(c.method_args, sort_keys=True)) for c in configs}


def test_gpu_suite_runs_the_der_protocol_with_the_tuned_baselines():
    configs = load_suite(GPU_SUITE)
    assert {c.seed for c in configs} == {0, 1, 2}
    for c in configs:
        assert (c.stream, c.model, c.epochs, c.batch_size, c.device) == ("split-cifar10", "resnet18", 50, 32, "cuda")
        assert c.checksum and c.amp is None and c.max_train_per_experience is None
        if "mem_size" in c.method_args:
            assert c.method_args["mem_size"] == int(c.name.rsplit("@", 1)[1])
            assert c.method_args["replay_batch_size"] == 32
    by_label = {c.name: c for c in configs}
    for label, (lr, alpha, beta) in DER_TUNED.items():
        c = by_label[label]
        assert c.lr == lr
        if alpha is not None:
            assert (c.method, c.method_args["alpha"], c.method_args["beta"]) == ("der", alpha, beta)
    assert {"kd-replay@200", "kd-replay@500", "kd-replay@5120"} <= set(by_label)
    assert all(by_label[f"er@{m}"].method_args["policy"] == "reservoir" for m in (200, 500, 5120))


def test_smoke_suite_holds_the_same_runs_at_cpu_size():
    gpu, smoke = load_suite(GPU_SUITE), load_suite(SMOKE_SUITE)
    assert _entries(smoke) == _entries(gpu)
    for c in smoke:
        assert (c.stream, c.model, c.epochs, c.device, c.seed, c.checksum) == ("split-cifar10", "resnet18", 1, "cpu", 0, False)
        assert (c.max_train_per_experience, c.max_test_per_experience) == (200, 100)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    from archives import write_cifar10

    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, train_per_class=4, test_per_class=2)
    return root


def _spy_on_augmentation(monkeypatch) -> list[int]:
    """Rows of every batch the augmentation changed, recorded as the model receives it."""
    rows: list[int] = []
    original = AugmentationPlugin.before_training

    def spy(self, strategy, **kwargs):
        original(self, strategy, **kwargs)
        if getattr(strategy, "_spied", False):
            return
        strategy._spied = True
        augmented = strategy.forward

        def forward():
            before = strategy.mbatch[0]
            out = augmented()
            if strategy.is_training:
                assert strategy.mbatch[0].shape == before.shape and not strategy.mbatch[0].equal(before)
                rows.append(before.shape[0])
            return out

        strategy.forward = forward

    monkeypatch.setattr(AugmentationPlugin, "before_training", spy)
    return rows


def _smoke(label: str, **changes):
    """A run of the smoke suite, cut to 4 training and 2 test images per experience for CI time
    (a ResNet-18 step on 32 images takes about 2 s on one CPU thread)."""
    config = {c.name: c for c in load_suite(SMOKE_SUITE)}[label]
    return replace(config, **{"max_train_per_experience": 4, "max_test_per_experience": 2, **changes})


@pytest.mark.slow
def test_smoke_kd_replay_trains_a_resnet18_on_augmented_stream_and_replayed_rows(cifar_root, tmp_path, monkeypatch):
    rows = _spy_on_augmentation(monkeypatch)
    out = tmp_path / "results"
    path, ran = run_to_file(_smoke("kd-replay@200"), out, cifar_root)
    result = json.loads(path.read_text())
    assert ran and result["config"]["model"] == "resnet18" and result["config"]["checksum"] is False
    assert len(result["accuracy_matrix"]) == 5 and not result["diverged"]
    # one step per experience: 4 stream rows, then the 4, 8, 12, 16 rows of the buffer with them
    assert rows == [4, 8, 12, 16, 20]
    assert main(["summary", str(out)]) == 0


def test_augmentation_reaches_the_rows_avalanche_der_appends(cifar_root, tmp_path, monkeypatch):
    """Avalanche's DER appends its replay batch after the plugins' before_forward
    (once its buffer holds a batch of 32: the fifth experience here)."""
    rows = _spy_on_augmentation(monkeypatch)
    result = run(_smoke("der++@200", model="mlp", max_train_per_experience=8), data_root=cifar_root)
    assert rows == [8, 8, 8, 8, 8 + 32] and not result["diverged"]


GPU_SCRIPT = BENCHMARKS / "gpu" / "der_protocol.sh"


def test_the_gpu_script_runs_the_gpu_suites_rows_in_bf16():
    # The prepared script for a lent GPU types its runs out as `ckd run` commands: each must be the
    # suite's row (seed 0), only in bf16.
    import re
    import shlex

    from ckd.benchmarking.suite import method_configs
    from ckd.cli import _build_parser, _run_settings

    script = GPU_SCRIPT.read_text()
    settings = dict(re.findall(r'^\s*\[(\S+)\]="([^"]+)"$', script, re.M))
    command = re.search(r'-m ckd run (.*?) --out', script, re.S).group(1).replace("\\\n", " ")
    suite = {c.name: c for c in load_suite(GPU_SUITE) if c.seed == 0}
    assert set(settings) == {"kd-replay@500", "der++@500"}
    for label, options in settings.items():
        words = shlex.split(command.replace("${settings[$label]}", options).replace('"$epochs"', "50").replace('"$label"', label)
                            .replace('"$device"', "cuda").replace('"$data"', "DATA"))
        args = _build_parser().parse_args(["run", *words])
        method_args, common = _run_settings(args)
        (config,) = method_configs(stream=args.stream, methods=args.method, seeds=args.seeds, settings=method_args,
                                   device=args.device, task_labels=False, **common)
        assert config.resolved() == replace(suite[label], amp="bf16").resolved(), label
