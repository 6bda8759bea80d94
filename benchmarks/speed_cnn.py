"""Time per training iteration of convolutional runs, float32 against bf16, side by side in one process.

Protocol: online Split-CIFAR-10 (``benchmarks/online_cifar10.toml``): the reduced ResNet-18
(nf 20), SGD lr 0.1, stream batch 10, replay batch 10, buffer 500, crop and flip on the
stream and replayed rows. Every method first learns experience 0 (untimed, so that its
buffer and teacher exist), then experience 1 is timed. Methods are timed in turn,
A B C … A B C …, ``--repeats`` times; the median seconds per iteration is kept.
``ratios`` divide medians, ``ratios_paired`` are the medians of the ratios within a round.

    python benchmarks/speed_cnn.py --data-root DIR --json benchmarks/results/speed_cnn_cpu.json

Methods, each ``_fp32`` and ``_bf16`` (``torch.autocast`` bf16 with the model channels_last,
what ``--amp bf16 --no-amp-teachers`` does), and the kd-replay ones also ``_bf16_teachers`` (the
teachers' forward passes under the autocast too: ``--amp bf16``, the default): ``raw_loop`` (plain PyTorch doing
kd-replay's math: crop+flip, one forward over stream + replayed rows, a teacher forward on the
replayed rows, CE + T²·KL + replay CE, backward, step; its teacher under the autocast) — the floor;
``kd_replay`` (ckd's tensor path, as the runner builds it, kd-replay's defaults);
``kd_replay_ema_all_rows`` (the online table's kd-replay: class-balanced buffer, α 0.3, an EMA
teacher distilling the replayed and the incoming rows, so two teacher passes per step);
``er`` (Avalanche's ``ReplayPlugin`` on the tensor path). ``scoring_*``: one
pass of the runner's scorer over the 10,000 test images, seconds. ``run_estimate_s``:
a whole online run of kd-replay estimated from these (5,000 iterations, 10 scoring passes:
EMA and trained weights after each experience).
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from speed import median_ratios

from ckd.benchmarking.methods import TrainSettings, make_strategy, resolve_method_args
from ckd.benchmarking.runner import device_name
from ckd.benchmarking.scoring import AccuracyEvaluator
from ckd.common.files import write_json_atomic
from ckd.data.models import reduced_resnet18
from ckd.data.streams import make_stream
from ckd.distillation.losses import soft_kl
from ckd.engines.amp import MixedPrecisionPlugin
from ckd.engines.augmentation import AugmentationPlugin
from ckd.engines.tensor_data import dataset_tensors

PRECISIONS = ("fp32", "bf16")
METHODS = ("raw_loop", "kd_replay", "kd_replay_ema_all_rows", "er")
TEACHER_METHODS = ("kd_replay", "kd_replay_ema_all_rows")  # timed with their teachers under the autocast too
RATIOS = {
    "kd_replay_bf16_vs_raw_loop_bf16": ("kd_replay_bf16", "raw_loop_bf16"),
    "kd_replay_bf16_teachers_vs_raw_loop_bf16": ("kd_replay_bf16_teachers", "raw_loop_bf16"),
    "kd_replay_bf16_teachers_vs_bf16": ("kd_replay_bf16_teachers", "kd_replay_bf16"),
    "kd_replay_ema_all_rows_bf16_teachers_vs_bf16": ("kd_replay_ema_all_rows_bf16_teachers", "kd_replay_ema_all_rows_bf16"),
    "kd_replay_ema_all_rows_bf16_vs_er_bf16": ("kd_replay_ema_all_rows_bf16", "er_bf16"),
    "kd_replay_ema_all_rows_bf16_teachers_vs_er_bf16": ("kd_replay_ema_all_rows_bf16_teachers", "er_bf16"),
    "kd_replay_fp32_vs_raw_loop_fp32": ("kd_replay_fp32", "raw_loop_fp32"),
    "raw_loop_bf16_vs_fp32": ("raw_loop_bf16", "raw_loop_fp32"),
    "kd_replay_bf16_vs_fp32": ("kd_replay_bf16", "kd_replay_fp32"),
    "er_bf16_vs_fp32": ("er_bf16", "er_fp32"),
    "kd_replay_bf16_vs_er_bf16": ("kd_replay_bf16", "er_bf16"),
}
SETTINGS = TrainSettings(lr=0.1, batch_size=10, epochs=1, eval_batch_size=1000, device="cpu")
RUN_ITERATIONS = 5000  # 50,000 training images, stream batch 10, one pass
SCORING_PASSES = 10  # after each of 5 experiences: the EMA and the trained weights


def _model(amp: bool, n_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = reduced_resnet18((3, 32, 32), n_classes)
    return model.to(memory_format=torch.channels_last) if amp else model


class RawLoop:
    """kd-replay's math in plain PyTorch on tensors, with the stream's crop and flip."""

    def __init__(self, stream, amp: bool, mem_size: int, replay_batch: int) -> None:
        self.amp, self.replay_batch, self.augment = amp, replay_batch, stream.augmentation
        self.model = _model(amp, stream.n_classes)
        self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        x0, y0, _ = dataset_tensors(stream.benchmark.train_stream[0].dataset.train())
        keep = torch.randperm(x0.shape[0])[:mem_size]
        self.buffer_x, self.buffer_y = x0[keep], y0[keep]
        self.generator = torch.Generator().manual_seed(0)
        self.state = copy.deepcopy(self.model.state_dict())

    def time_experience(self, experience) -> float:
        self.model.load_state_dict(self.state)
        x_all, y_all, _ = dataset_tensors(experience.dataset.train())
        opt = torch.optim.SGD(self.model.parameters(), lr=SETTINGS.lr, foreach=True)
        b, r = SETTINGS.batch_size, self.replay_batch
        start = time.perf_counter()
        order = torch.randperm(x_all.shape[0])
        for i in range(0, x_all.shape[0], b):
            idx = order[i : i + b]
            slot = torch.rand(self.buffer_x.shape[0], generator=self.generator).topk(r).indices
            x = self.augment(torch.cat([x_all[idx], self.buffer_x[slot]]))
            y, y_r = y_all[idx], self.buffer_y[slot]
            n = idx.shape[0]
            with torch.autocast("cpu", torch.bfloat16, enabled=self.amp):
                out = self.model(x).float()
                with torch.inference_mode():
                    target = self.teacher(x[n:]).float()
            loss = F.cross_entropy(out[:n], y) + soft_kl(out[n:], target.clone(), 4.0) + F.cross_entropy(out[n:], y_r)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - start


class TensorPath:
    """A runner method as the runner builds it: the tensor path, crop and flip, and with
    bf16 the mixed-precision plugin and a channels_last model."""

    def __init__(self, method: str, args: dict, stream, amp: bool, teachers: bool = False) -> None:
        self.model = _model(amp, stream.n_classes)
        extra = [AugmentationPlugin(stream.augmentation)]
        if amp:
            extra.append(MixedPrecisionPlugin("bf16", "cpu", teachers=teachers))
        self.strategy = make_strategy(method, self.model, SETTINGS, resolve_method_args(method, args),
                                      extra_plugins=extra, fast=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.strategy.train(stream.benchmark.train_stream[0])
        self.state = copy.deepcopy(self.model.state_dict())

    def time_experience(self, experience) -> float:
        self.model.load_state_dict(self.state)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.strategy.train(experience)
        return time.perf_counter() - start


def _method_args(name: str, mem_size: int, replay_batch: int) -> tuple[str, dict]:
    if name == "er":
        return "replay", {"mem_size": mem_size, "replay_batch_size": replay_batch, "policy": "reservoir"}
    if name == "kd_replay_ema_all_rows":
        return "kd-replay", {"mem_size": mem_size, "replay_batch_size": replay_batch, "policy": "class_balanced",
                             "alpha": 0.3, "teacher": "ema", "current_alpha": 0.3, "current_known_classes_only": False}
    return "kd-replay", {"mem_size": mem_size, "replay_batch_size": replay_batch}


def variants(name: str) -> tuple[str, ...]:
    """The precisions ``name`` is timed in: fp32, bf16, and for kd-replay bf16 with its teachers under the autocast."""
    return (*PRECISIONS, "bf16_teachers") if name in TEACHER_METHODS else PRECISIONS


def _scoring_seconds(stream, amp: bool) -> float:
    evaluator = AccuracyEvaluator(stream, torch.device("cpu"), SETTINGS.eval_batch_size, "bf16" if amp else None)
    model = _model(amp, stream.n_classes)
    start = time.perf_counter()
    evaluator.accuracies(model)
    return time.perf_counter() - start


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    stream = make_stream("split-cifar10", seed=0, data_root=args.data_root, checksum=not args.no_checksum,
                         max_train_per_experience=args.max_train, max_test_per_experience=args.max_test)
    experience = stream.benchmark.train_stream[1]
    iterations = math.ceil(len(experience.dataset) / SETTINGS.batch_size)
    runners = {}
    for name in args.methods:
        for precision in variants(name):
            amp = precision != "fp32"
            if name == "raw_loop":
                runners[f"{name}_{precision}"] = RawLoop(stream, amp, args.mem_size, args.replay_batch)
            else:
                runners[f"{name}_{precision}"] = TensorPath(*_method_args(name, args.mem_size, args.replay_batch),
                                                            stream, amp, teachers=precision == "bf16_teachers")
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, runner in runners.items():
            torch.manual_seed(1)
            samples[name].append(runner.time_experience(experience) / iterations)
    seconds, ratios, paired = median_ratios(samples, RATIOS)
    scoring = {p: _scoring_seconds(stream, p == "bf16") for p in PRECISIONS}
    test_images = sum(len(e.dataset) for e in stream.benchmark.test_stream)
    scoring_full = {p: s * 10000 / test_images for p, s in scoring.items()}
    scoring_full["bf16_teachers"] = scoring_full["bf16"]  # the scorer has no teacher
    estimate = {f"{m}_{p}": seconds[f"{m}_{p}"] * RUN_ITERATIONS + SCORING_PASSES * scoring_full[p]
                for m in TEACHER_METHODS for p in variants(m) if f"{m}_{p}" in seconds}
    return {
        "protocol": "online Split-CIFAR-10: reduced ResNet-18 (nf 20), SGD lr 0.1, stream batch 10, "
                    "crop+flip, experience 1 timed",
        "device": device_name(torch.device("cpu")),
        "threads": args.threads,
        "iterations_per_repeat": iterations,
        "repeats": args.repeats,
        "mem_size": args.mem_size,
        "replay_batch_size": args.replay_batch,
        "seconds_per_iteration": seconds,
        "seconds_per_iteration_all": samples,
        "ratios": ratios,
        "ratios_paired": paired,
        "scoring_seconds_per_10000_images": {p: scoring_full[p] for p in PRECISIONS},
        "run_estimate_s": estimate,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--json", default=None, help="write the measurements here")
    parser.add_argument("--max-train", type=int, default=500, help="images per experience (the timed one: 500)")
    parser.add_argument("--max-test", type=int, default=1000, help="test images per experience for the scoring time")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mem-size", type=int, default=500)
    parser.add_argument("--replay-batch", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-checksum", action="store_true", help="skip the MD5 check of the dataset files")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args(argv)
    result = measure(args)
    for name, value in sorted(result["seconds_per_iteration"].items()):
        print(f"{name:>18}: {1000 * value:7.1f} ms/iteration")
    for key, value in result["ratios"].items():
        print(f"{key}: {value:.3f} (paired {result['ratios_paired'][key]:.3f})")
    for name, value in result["run_estimate_s"].items():
        print(f"whole online run of {name}: about {value:.0f} s")
    if args.json:
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
