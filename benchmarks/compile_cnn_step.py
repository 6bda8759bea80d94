"""Does ``torch.compile`` pay for the online CIFAR step on the CPU? Eager against compiled, side by side in one process.

The step: the reduced ResNet-18 (nf 20) on a minibatch of 20 CIFAR-sized images (stream batch 10 + replay
batch 10, what every online method trains on once its buffer holds something), bf16 autocast with the model
channels_last (``--amp bf16``), cross-entropy, backward, SGD step; one thread, as a suite's runs use.
Two identical models, one wrapped in ``torch.compile`` (default mode, Inductor); the compile time is
measured on its first steps. Then ``--rounds`` rounds of ``--steps`` steps each, eager and compiled in
turn; ``ratio_paired`` is the median over rounds of compiled/eager.

    python benchmarks/compile_cnn_step.py --json benchmarks/results/compile_cnn_step_cpu.json
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from speed import median_ratios

from ckd.benchmarking.runner import device_name
from ckd.common.files import write_json_atomic
from ckd.data.models import reduced_resnet18


def _model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = reduced_resnet18((3, 32, 32), 10).to(memory_format=torch.channels_last)
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


def _steps(model, optimizer, x, y, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / n


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, 32, 32, generator=g).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (20,), generator=g)
    eager = _model()
    compiled_model, compiled_optimizer = _model()
    compiled = (torch.compile(compiled_model), compiled_optimizer)
    start = time.perf_counter()
    _steps(*compiled, x, y, 3)
    compile_s = time.perf_counter() - start
    _steps(*eager, x, y, 3)
    samples: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.rounds):
        samples["eager"].append(_steps(*eager, x, y, args.steps))
        samples["compiled"].append(_steps(*compiled, x, y, args.steps))
    seconds, ratios, paired = median_ratios(samples, {"compiled_vs_eager": ("compiled", "eager")})
    return {
        "step": "reduced ResNet-18 (nf 20), batch 20 (10 stream + 10 replayed), bf16 autocast, channels_last, SGD",
        "threads": args.threads, "rounds": args.rounds, "steps_per_round": args.steps,
        "compile_s": compile_s, "seconds_per_step": seconds, "samples": samples,
        "ratio": ratios["compiled_vs_eager"], "ratio_paired": paired["compiled_vs_eager"],
        "device": device_name(torch.device("cpu")), "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--json", default=None, help="write the measurement here")
    args = parser.parse_args(argv)
    result = measure(args)
    print(f"compile {result['compile_s']:.1f} s; eager {1000 * result['seconds_per_step']['eager']:.1f} ms/step, "
          f"compiled {1000 * result['seconds_per_step']['compiled']:.1f} ms/step; "
          f"compiled/eager {result['ratio_paired']:.3f} (paired)")
    if args.json:
        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
