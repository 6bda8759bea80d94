"""Does capturing the training step in a CUDA graph pay on a GPU? The stacked kd-replay step
of ``ckd.engines.vectorized`` (five DER MLPs, stream batch 10 + replay batch 32, teacher forward,
per-seed cross-entropies and soft KL, SGD), timed eagerly and replayed from one CUDA graph,
side by side in one process. New minibatches are copied into the graph's static inputs
before each replay, as a training loop would.

    python benchmarks/cuda_graph_step.py --json benchmarks/results/cuda_graph_step_h200.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ckd.benchmarking.runner import device_name
from ckd.data.models import mlp
from ckd.engines.stacked_kd import summed_loss
from ckd.engines.stacked_model import StackedModel


def _measure(n_seeds: int, steps: int, repeats: int) -> dict[str, float]:
    """Median ms per step of ``n_seeds`` stacked MLPs, eager and from one CUDA graph."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    net = StackedModel([mlp((1, 28, 28), 10) for _ in range(n_seeds)]).to(device)
    teacher = net.detached()
    lr = 0.03
    x = torch.randn(n_seeds, 10, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (n_seeds, 10), device=device)
    rx = torch.randn(n_seeds, 32, 1, 28, 28, device=device)
    ry = torch.randint(0, 10, (n_seeds, 32), device=device)
    pool = [(torch.randn_like(x), torch.randint_like(y, 10), torch.randn_like(rx), torch.randint_like(ry, 10))
            for _ in range(8)]

    def step() -> None:
        params = net.tensors
        for p in params:
            p.grad = None
        with torch.no_grad():
            target = net(rx, params=teacher)
        out = net(torch.cat([x, rx], dim=1))
        loss, _ = summed_loss(out, y, ry, target, None, 1.0, 1.0, 4.0)
        loss.backward()
        with torch.no_grad():
            torch._foreach_add_(params, [p.grad for p in params], alpha=-lr)

    def feed(k: int) -> None:
        for static, new in zip((x, y, rx, ry), pool[k % len(pool)]):
            static.copy_(new)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for k in range(5):  # warm-up on a side stream before capture, as the CUDA-graph docs ask
            feed(k)
            step()
    torch.cuda.current_stream().wait_stream(side)
    for p in net.tensors:
        p.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    def timed(run) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        for k in range(steps):
            feed(k)
            run()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps * 1e3

    eager, graphed = [], []
    for _ in range(repeats):
        eager.append(timed(step))
        graphed.append(timed(graph.replay))
    return {
        "eager": statistics.median(eager), "cuda_graph": statistics.median(graphed),
        "graph_vs_eager": statistics.median(g / e for g, e in zip(graphed, eager)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("cuda_graph_step: needs a CUDA device")
    device = torch.device("cuda")
    result = {"device": device_name(device), "torch": torch.__version__, "steps": args.steps, "ms_per_step": {}}
    for n_seeds in args.seeds:
        result["ms_per_step"][str(n_seeds)] = _measure(n_seeds, args.steps, args.repeats)
        print(n_seeds, result["ms_per_step"][str(n_seeds)], flush=True)
    if args.json:
        from pathlib import Path

        from ckd.common.files import write_json_atomic

        write_json_atomic(Path(args.json), result)
    else:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
