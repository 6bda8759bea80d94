"""Time per training iteration of kd-replay against its baselines, side by side in one process.

Protocol: Seq-MNIST as in the DER paper (MLP 784-100-100-10, SGD, stream batch 10,
one epoch). Every method first learns experience 0 (untimed, so that buffers and
teachers exist), then experience 1 is timed. Methods are timed in turn, A B C …
A B C …, ``--repeats`` times, and the median seconds per iteration is kept, so
a drift in machine speed hits every method alike. Ratios are of medians.

    python benchmarks/speed.py --data-root DIR --json speed.json [--quick] [--device cuda]
    python benchmarks/speed.py --profile kd-replay    # where the time of one method goes
    python benchmarks/speed.py --family --data-root DIR --json family_cost.json

``--family`` times the distillation family instead (the Seq-MNIST @500 setting of
``benchmarks/distillation_family.toml``): experiences 0–3 are learned untimed,
so that several teachers exist, then experience 4 is timed; it also reports the
memory each method keeps between experiences (buffer, stored teachers) and the
ratios of both to kd-replay alone.

Methods: ``raw_loop`` (plain PyTorch doing kd-replay's math: one forward over
current + replayed rows, a teacher forward, soft KL + CE, backward, step; data
as tensors, no DataLoader) — the lower bound; Avalanche ``Naive``; ``Naive`` +
Avalanche ``ReplayPlugin`` at the same replay batch; Avalanche ``DER``;
ckd ``kd-replay`` and ``kd-replay-cached`` (class-balanced buffer, soft targets on all
outputs, α 1, T 2, β 1, as tuned for Seq-MNIST). ``*_fast``: the same strategy on
the tensor-native path (``ckd.engines.training``, the runner's default); ``kd_replay_vectorized_5``:
kd-replay for seeds 0–4 as one stacked model (``ckd.engines.vectorized``), its time per
iteration covering all five seeds, on ``--vectorized-threads`` (default: every core; the
others on ``--threads``, default one, the fastest for one run of this MLP here).
``vectorized_5_seeds_vs_5_sequential`` divides that by five times ``kd_replay_fast``.
``ratios`` divide medians; ``ratios_paired`` are the medians of the ratios within each round.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import math
import os
import platform
import pstats
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from ckd.benchmarking.methods import TrainSettings, make_strategy, resolve_method_args
from ckd.benchmarking.runner import device_name
from ckd.common.files import write_json_atomic
from ckd.data.models import mlp
from ckd.data.streams import make_stream
from ckd.distillation.losses import soft_kl

METHODS = ("raw_loop", "naive", "naive_replay", "der", "kd_replay", "kd_replay_cached",
           "naive_fast", "kd_replay_fast", "kd_replay_vectorized_5")
VECTORIZED_SEEDS = 5
RATIOS = {
    "kd_replay_vs_naive_replay": ("kd_replay", "naive_replay"),
    "kd_replay_vs_der": ("kd_replay", "der"),
    "kd_replay_vs_raw_loop": ("kd_replay", "raw_loop"),
    "kd_replay_cached_vs_naive_replay": ("kd_replay_cached", "naive_replay"),
    "kd_replay_fast_vs_raw_loop": ("kd_replay_fast", "raw_loop"),
    "kd_replay_fast_vs_kd_replay": ("kd_replay_fast", "kd_replay"),
    "naive_fast_vs_naive": ("naive_fast", "naive"),
}


def median_ratios(
    samples: dict[str, list[float]], pairs: dict[str, tuple[str, str]]
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Median seconds per method, ``pairs``' ratios of those medians, and the same ratios taken
    within each round (methods timed seconds apart) then the median over rounds: what a drift in
    machine speed between rounds moves least. Pairs naming an untimed method are left out."""
    seconds = {name: statistics.median(v) for name, v in samples.items()}
    timed = {key: (a, b) for key, (a, b) in pairs.items() if a in samples and b in samples}
    ratios = {key: seconds[a] / seconds[b] for key, (a, b) in timed.items()}
    paired = {key: statistics.median(x / y for x, y in zip(samples[a], samples[b])) for key, (a, b) in timed.items()}
    return seconds, ratios, paired


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _baseline(name: str, mem_size: int, replay_batch: int) -> tuple[str, dict]:
    return {
        "naive": ("naive", {}),
        "naive_replay": ("replay", {"mem_size": mem_size, "replay_batch_size": replay_batch, "policy": "reservoir"}),
        "der": ("der", {"mem_size": mem_size, "replay_batch_size": replay_batch, "alpha": 1.0, "beta": 0.5}),
        "kd_replay": ("kd-replay", _kd_args(mem_size, replay_batch)),
        "kd_replay_cached": ("kd-replay-cached", _kd_args(mem_size, replay_batch)),
    }[name]


_FAMILY_BASE = {"mem_size": 500, "replay_batch_size": 64, "alpha": 1.0, "temperature": 2.0, "beta": 1.0,
                "policy": "reservoir", "known_classes_only": False}
FAMILY = {  # name -> (method, settings): benchmarks/distillation_family.toml at buffer 500
    "kd_replay": ("kd-replay", _FAMILY_BASE),
    "kd_replay_cached": ("kd-replay-cached", _FAMILY_BASE),
    "kd_feature": ("kd-feature", {**_FAMILY_BASE, "feature_weight": 1.0, "feature_metric": "l2"}),
    "kd_relation": ("kd-relation", {**_FAMILY_BASE, "relation_weight": 1.0}),
    "kd_replay_lwf": ("kd-replay-lwf", {**_FAMILY_BASE, "current_alpha": 1.0}),
    "kd_multi_teacher_own": ("kd-multi-teacher", {**_FAMILY_BASE, "n_teachers": 4, "ensemble": "own"}),
    "kd_multi_teacher_average": ("kd-multi-teacher", {**_FAMILY_BASE, "n_teachers": 4, "ensemble": "average"}),
    "kd_lwf": ("kd-lwf", {"current_alpha": 1.0, "temperature": 2.0}),
}


class AvalancheMethod:
    """An Avalanche strategy trained on the first ``warmup`` experiences, then timed on the next."""

    def __init__(
        self, method: str, args: dict, stream, settings: TrainSettings, warmup: int = 1, fast: bool = False,
    ) -> None:
        torch.manual_seed(0)
        self.model = mlp(stream.input_shape, stream.n_classes)
        self.strategy = make_strategy(method, self.model, settings, resolve_method_args(method, args), fast=fast)
        self.stream = stream
        for experience in stream.benchmark.train_stream[:warmup]:
            self.strategy.train(experience)
        self.state = copy.deepcopy(self.strategy.model.state_dict())

    def state_mb(self) -> dict[str, float]:
        """Memory the method keeps between experiences (ckd plugins only), MB."""
        from ckd.distillation.plugin import KDReplayPlugin

        kd = next((p for p in self.strategy.plugins if isinstance(p, KDReplayPlugin)), None)
        if kd is None:
            return {}
        return {k: v / 2**20 for k, v in kd.memory_bytes().items()}

    def time_experience(self, experience) -> float:
        self.strategy.model.load_state_dict(self.state)
        device = torch.device(self.strategy.device)
        _sync(device)
        start = time.perf_counter()
        self.strategy.train(experience)
        _sync(device)
        return time.perf_counter() - start


class VectorizedMethod:
    """kd-replay for seeds 0…n−1 as one stacked model (``ckd.engines.vectorized``): trained on
    experience 0, then timed on experience 1 (every seed's parameters restored each time)."""

    def __init__(self, args: argparse.Namespace, n_seeds: int) -> None:
        from ckd.benchmarking.run_config import RunConfig
        from ckd.benchmarking.vectorized_runs import VectorizedTraining

        configs = [
            RunConfig("split-mnist", "kd-replay", seed=s, lr=0.03, batch_size=10, epochs=1, device=args.device,
                      threads=args.vectorized_threads, max_train_per_experience=args.max_train, max_test_per_experience=100,
                      eval_ema_half_life=0.0, method_args=_kd_args(args.mem_size, args.replay_batch))
            for s in range(n_seeds)
        ]
        threads = torch.get_num_threads()
        self.training = VectorizedTraining(configs, args.data_root)  # sets its configs' threads
        self.training.train_experience(0)
        torch.set_num_threads(threads)
        self.state = [p.detach().clone() for p in self.training.net.parameters()]
        self.device = self.training.device
        self.threads = args.vectorized_threads

    def time_experience(self, experience) -> float:
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self._time(experience)
        finally:
            torch.set_num_threads(threads)

    def _time(self, experience) -> float:
        with torch.no_grad():
            for p, saved in zip(self.training.net.parameters(), self.state):
                p.copy_(saved)
        _sync(self.device)
        start = time.perf_counter()
        self.training.train_experience(experience.current_experience)
        _sync(self.device)
        return time.perf_counter() - start


def _kd_args(mem_size: int, replay_batch: int) -> dict:
    # The raw loop's math: no EMA of the weights to keep, and (with a class-balanced buffer, which
    # holds no sample of the experience being learned) no per-row target mask to build.
    return {"mem_size": mem_size, "replay_batch_size": replay_batch, "alpha": 1.0, "temperature": 2.0,
            "beta": 1.0, "policy": "class_balanced", "known_classes_only": False,
            "current_experience_targets": True}


class RawLoop:
    """kd-replay's math in plain PyTorch: the lower bound for the same work."""

    def __init__(self, stream, settings: TrainSettings, mem_size: int, replay_batch: int) -> None:
        self.device = torch.device(settings.device)
        self.settings = settings
        self.replay_batch = replay_batch
        torch.manual_seed(0)
        self.model = mlp(stream.input_shape, stream.n_classes).to(self.device)
        self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        x0, y0 = _tensors(stream.benchmark.train_stream[0].dataset, self.device)
        keep = torch.randperm(x0.shape[0], device=self.device)[:mem_size]
        self.buffer_x, self.buffer_y = x0[keep], y0[keep]
        self.generator = torch.Generator(device=self.device).manual_seed(0)
        self.data = {}

    def time_experience(self, experience) -> float:
        key = experience.current_experience
        if key not in self.data:
            self.data[key] = _tensors(experience.dataset, self.device)
        x_all, y_all = self.data[key]
        opt = torch.optim.SGD(self.model.parameters(), lr=self.settings.lr)
        b, r = self.settings.batch_size, self.replay_batch
        _sync(self.device)
        start = time.perf_counter()
        order = torch.randperm(x_all.shape[0], device=self.device)
        for i in range(0, x_all.shape[0], b):
            idx = order[i : i + b]
            x, y = x_all[idx], y_all[idx]
            slot = torch.rand(self.buffer_x.shape[0], generator=self.generator, device=self.device).topk(r).indices
            x_r, y_r = self.buffer_x[slot], self.buffer_y[slot]
            out = self.model(torch.cat([x, x_r]))
            with torch.inference_mode():
                target = self.teacher(x_r)
            n = x.shape[0]
            loss = F.cross_entropy(out[:n], y) + soft_kl(out[n:], target.clone(), 2.0)
            loss = loss + F.cross_entropy(out[n:], y_r)
            opt.zero_grad()
            loss.backward()
            opt.step()
        _sync(self.device)
        return time.perf_counter() - start


def _tensors(dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=4096)
    xs, ys = zip(*[(b[0], b[1]) for b in loader])
    return torch.cat(xs).to(device), torch.cat(ys).to(device)


def _setup(args: argparse.Namespace, timed: int):
    """Device, Seq-MNIST stream, DER training settings, the timed experience and its iterations."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    stream = make_stream(
        "split-mnist", seed=0, data_root=args.data_root,
        max_train_per_experience=args.max_train, max_test_per_experience=100,
    )
    settings = TrainSettings(lr=0.03, batch_size=10, epochs=1, eval_batch_size=1000, device=args.device)
    experience = stream.benchmark.train_stream[timed]
    return device, stream, settings, experience, math.ceil(len(experience.dataset) / settings.batch_size)


def measure(args: argparse.Namespace) -> dict:
    device, stream, settings, experience, iterations = _setup(args, timed=1)
    runners = {}
    for name in args.methods:
        if name == "raw_loop":
            runners[name] = RawLoop(stream, settings, args.mem_size, args.replay_batch)
        elif name == "kd_replay_vectorized_5":
            runners[name] = VectorizedMethod(args, VECTORIZED_SEEDS)
        else:
            fast = name.endswith("_fast")
            method = _baseline(name.removesuffix("_fast"), args.mem_size, args.replay_batch)
            runners[name] = AvalancheMethod(*method, stream, settings, fast=fast)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    peak_cuda: dict[str, float | None] = {name: None for name in runners}
    for _ in range(args.repeats):
        for name, runner in runners.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            torch.set_num_threads(args.threads)  # the vectorized pass sets its own and restores this
            samples[name].append(runner.time_experience(experience) / iterations)
            if device.type == "cuda":
                peak_cuda[name] = torch.cuda.max_memory_allocated(device) / 2**20
    seconds, ratios, paired = median_ratios(samples, RATIOS)
    if "kd_replay_vectorized_5" in seconds and "kd_replay_fast" in seconds:
        ratios["vectorized_5_seeds_vs_5_sequential"] = (
            seconds["kd_replay_vectorized_5"] / (VECTORIZED_SEEDS * seconds["kd_replay_fast"])
        )
        paired["vectorized_5_seeds_vs_5_sequential"] = statistics.median(
            v / (VECTORIZED_SEEDS * f) for v, f in zip(samples["kd_replay_vectorized_5"], samples["kd_replay_fast"])
        )
    return {
        "protocol": "Seq-MNIST (DER): MLP 784-100-100-10, SGD lr 0.03, stream batch 10, experience 1 timed",
        "device": device_name(device),
        "threads": args.threads,
        "vectorized_threads": args.vectorized_threads,
        "iterations_per_repeat": iterations,
        "repeats": args.repeats,
        "mem_size": args.mem_size,
        "replay_batch_size": args.replay_batch,
        "seconds_per_iteration": seconds,
        "seconds_per_iteration_all": samples,
        "peak_cuda_memory_mb": peak_cuda if device.type == "cuda" else None,
        "ratios": ratios,
        "ratios_paired": paired,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }


def measure_family(args: argparse.Namespace) -> dict:
    device, stream, settings, experience, iterations = _setup(args, timed=4)
    runners = {name: AvalancheMethod(*FAMILY[name], stream, settings, warmup=4) for name in args.family_methods}
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, runner in runners.items():
            samples[name].append(runner.time_experience(experience) / iterations)
    seconds = {name: statistics.median(v) for name, v in samples.items()}
    state = {name: runner.state_mb() for name, runner in runners.items()}
    base_state = sum(state["kd_replay"].values()) if "kd_replay" in state else None
    return {
        "protocol": "Seq-MNIST (DER) @500: MLP 784-100-100-10, SGD lr 0.03, stream batch 10, replay batch 64, "
                    "experiences 0-3 untimed, experience 4 timed",
        "device": device_name(device),
        "threads": args.threads,
        "iterations_per_repeat": iterations,
        "repeats": args.repeats,
        "methods": {name: {"method": m, "settings": a} for name, (m, a) in FAMILY.items() if name in runners},
        "seconds_per_iteration": seconds,
        "seconds_per_iteration_all": samples,
        "state_mb": state,
        "time_vs_kd_replay": {n: s / seconds["kd_replay"] for n, s in seconds.items()} if "kd_replay" in seconds else {},
        "state_vs_kd_replay": (
            {n: sum(v.values()) / base_state for n, v in state.items()} if base_state else {}
        ),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }


def profile(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    stream = make_stream("split-mnist", seed=0, data_root=args.data_root, max_train_per_experience=args.max_train)
    settings = TrainSettings(lr=0.03, batch_size=10, epochs=1, eval_batch_size=1000, device=args.device)
    method = _baseline(args.profile.removesuffix("_fast"), args.mem_size, args.replay_batch)
    runner = AvalancheMethod(*method, stream, settings, fast=args.profile.endswith("_fast"))
    profiler = cProfile.Profile()
    profiler.enable()
    runner.time_experience(stream.benchmark.train_stream[1])
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(45)
    print(out.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write the measurements here")
    parser.add_argument("--quick", action="store_true", help="1000 images per experience, 3 repeats (< 2 min on 2 cores)")
    parser.add_argument("--max-train", type=int, default=None, help="images per experience (default: all)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mem-size", type=int, default=500)
    parser.add_argument("--replay-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of every method but the vectorized pass")
    parser.add_argument("--vectorized-threads", type=int, default=os.cpu_count(),
                        help="intra-op threads of the vectorized pass (default: every core; one sequential "
                             "run is fastest on one thread here, several seeds in one pass use more)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--family", action="store_true",
                        help="time the distillation family on experience 4 instead (default 2000 images per experience)")
    parser.add_argument("--family-methods", nargs="+", default=list(FAMILY), choices=list(FAMILY))
    parser.add_argument("--profile", default=None, choices=[m for m in METHODS if m not in ("raw_loop", "kd_replay_vectorized_5")],
                        help="print a cProfile of one method's timed experience instead")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_train = args.max_train or 1000
        args.repeats = 3
    warnings.filterwarnings("ignore")
    if args.profile:
        profile(args)
        return 0
    if args.family:
        args.max_train = args.max_train or 2000
        result = measure_family(args)
        print(f"{'method':<26} {'ms / iteration':>15} {'vs kd-replay':>13} {'state (MB)':>11}")
        for name, sec in result["seconds_per_iteration"].items():
            print(f"{name:<26} {1000 * sec:>15.3f} {result['time_vs_kd_replay'].get(name, float('nan')):>13.3f} "
                  f"{sum(result['state_mb'][name].values()):>11.3f}")
        if args.json:
            write_json_atomic(Path(args.json), result)
            print(f"wrote {args.json}", file=sys.stderr)
        return 0
    result = measure(args)
    print(f"{'method':<24} {'ms / iteration':>15}")
    for name, sec in result["seconds_per_iteration"].items():
        print(f"{name:<24} {1000 * sec:>15.3f}")
    print(f"{'ratio':<34} {'of medians':>10} {'paired':>8}")
    for key, value in result["ratios"].items():
        print(f"{key:<34} {value:>10.3f} {result['ratios_paired'][key]:>8.3f}")
    if args.json:
        write_json_atomic(Path(args.json), result)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
