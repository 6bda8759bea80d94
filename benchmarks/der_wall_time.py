"""Wall time of the whole DER table (benchmarks/der_*.toml) before and after the tensor path.

The table is 112 runs (hours of CPU), so it is not re-run. "Before" is the sum of
``wall_time_s`` of the committed results (Avalanche's DataLoader). "After" is an
extrapolation: one cell per kind of method and stream family is run with both
loaders, one seed each, side by side in one process (``--measure`` appends to the
JSONL file, one session per call; the report reads the latest session); each
committed run's time is then scaled by the measured tensor/avalanche ratio of its
family and kind, and, for the cells that ``--vectorize`` covers, by the
vectorized/avalanche ratio per seed.

    python benchmarks/der_wall_time.py --measure --data-root DIR   # minutes, appends the measurements
    python benchmarks/der_wall_time.py                             # prints before / after
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from collections import defaultdict
from pathlib import Path

RESULTS = ("benchmarks/results/der_seq_mnist", "benchmarks/results/der_domain_mnist")
MEASURED = Path("benchmarks/results/der_wall_time_cpu.jsonl")
CELLS = (  # (suite, label, streams measured)
    ("benchmarks/der_seq_mnist.toml", "sgd", ("split-mnist",)),
    ("benchmarks/der_seq_mnist.toml", "kd-replay@500", ("split-mnist",)),
    ("benchmarks/der_seq_mnist.toml", "er@500", ("split-mnist",)),
    ("benchmarks/der_seq_mnist.toml", "der@500", ("split-mnist",)),
    ("benchmarks/der_domain_mnist.toml", "kd-replay@500", ("permuted-mnist",)),
    ("benchmarks/der_domain_mnist.toml", "er@500", ("permuted-mnist",)),
    ("benchmarks/der_domain_mnist.toml", "der@500", ("permuted-mnist",)),
)


BEFORE_COMMIT = "3fbb724"  # the results as committed before the tensor path (Avalanche's DataLoader)


def _kind(label: str) -> str:
    """The method of a table label (``kd-replay@500`` → ``kd-replay``)."""
    return label.split("@")[0]


# A kind without a measurement of its own takes the closest measured one: joint trains
# like sgd; the cached teacher like the snapshot one; DER++ is DER with beta > 0; on a
# domain stream, sgd and joint take kd-replay's. Vectorized ratios apply only to kinds
# --vectorize covers (not Avalanche's DER).
_TENSOR_LIKE = {"joint": "sgd", "kd-replay-cached": "kd-replay", "der++": "der"}
_VECTOR_LIKE = {"kd-replay-cached": "kd-replay"}
_FALLBACK = "kd-replay"


def measure(data_root: str | None) -> None:
    from ckd.benchmarking.runner import run
    from ckd.benchmarking.suite import load_suite
    from ckd.benchmarking.vectorized_runs import check_vectorizable, run_vectorized

    session = int(time.time())
    with MEASURED.open("a") as out:
        def log(**record) -> None:
            out.write(json.dumps({"session": session, **record}) + "\n")
            out.flush()
            print(record, flush=True)

        for suite, label, streams in CELLS:
            configs = [c for c in load_suite(suite) if c.name == label and c.stream in streams]
            for loader in ("avalanche", "tensor"):
                config = dataclasses.replace(configs[0], loader=loader)
                start = time.perf_counter()
                result = run(config, data_root=data_root)
                log(suite=suite, stream=config.stream, label=label, seed=config.seed, loader=loader,
                    wall=time.perf_counter() - start, acc=result["final_average_accuracy"])
            configs = [dataclasses.replace(c, loader="tensor") for c in configs]  # what --vectorize runs on
            try:
                check_vectorizable(configs)
            except ValueError as err:
                log(suite=suite, label=label, vectorize_error=str(err))
                continue
            start = time.perf_counter()
            results = run_vectorized(configs, data_root=data_root)
            log(suite=suite, stream=configs[0].stream, label=label, seeds=[c.seed for c in configs],
                loader="vectorized", wall=time.perf_counter() - start,
                acc=[r["final_average_accuracy"] for r in results])


def _family(stream: str) -> str:
    return "seq" if stream.startswith("split") else "domain"


def _committed_results(commit: str) -> list[dict]:
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout

    paths = git("ls-tree", "-r", "--name-only", commit, "--", *RESULTS).split()
    return [json.loads(git("show", f"{commit}:{p}")) for p in paths if "__seed" in p and p.endswith(".json")]


def report(commit: str = BEFORE_COMMIT) -> None:
    before: dict[tuple[str, str], float] = defaultdict(float)
    results = _committed_results(commit)
    runs = len(results)
    for result in results:
        before[(_family(result["stream"]), _kind(result["label"]))] += result["wall_time_s"]
    walls: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    lines = [json.loads(line) for line in MEASURED.read_text().splitlines()]
    latest = max(m.get("session", 0) for m in lines)
    for m in lines:
        if "wall" in m and m.get("session", 0) == latest:
            per_seed = m["wall"] / len(m.get("seeds", [0]))
            walls[(_family(m["stream"]), _kind(m["label"]), m["loader"])].append(per_seed)
    ratio, vector_ratio = {}, {}
    for (family, kind, loader), values in walls.items():
        base = walls.get((family, kind, "avalanche"))
        if base and loader != "avalanche":
            (ratio if loader == "tensor" else vector_ratio)[(family, kind)] = min(values) / min(base)
    total_before = sum(before.values())
    total_after = total_vector = 0.0
    print(f"{'family':<8} {'kind':<17} {'before (s)':>11} {'tensor x':>9} {'vectorized x':>13}  ratio")
    for (family, kind), seconds in sorted(before.items()):
        key = (family, _TENSOR_LIKE.get(kind, kind))
        if key not in ratio:
            key = (family, _FALLBACK)
        r = ratio[key]
        # Vectorized where it pays: on one CPU thread a compute-bound step (the domain streams'
        # batch 128) gains nothing from stacking, and stacking each seed's own permuted data costs.
        v = min(vector_ratio.get((family, _VECTOR_LIKE.get(kind, kind)), r), r)
        total_after += seconds * r
        total_vector += seconds * v
        source = "measured" if (family, kind) in ratio else f"as {key[1]}"
        print(f"{family:<8} {kind:<17} {seconds:>11.0f} {r:>9.2f} {v:>13.2f}  {source}")
    print(f"\n{runs} runs. before (Avalanche DataLoader, wall_time_s as committed at {commit}): {total_before:,.0f} s")
    print(f"after, tensor path (extrapolated): {total_after:,.0f} s ({total_after / total_before:.2f}x)")
    print(f"after, tensor path + --vectorize where it pays (extrapolated): {total_vector:,.0f} s "
          f"({total_vector / total_before:.2f}x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", action="store_true", help="run the measured cells first (minutes)")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.measure:
        measure(args.data_root)
    report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
