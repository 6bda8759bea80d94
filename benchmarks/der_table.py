"""Our runs of the DER paper's MNIST cells beside its published numbers, as a Markdown table.

    python benchmarks/der_table.py benchmarks/results/der_seq_mnist benchmarks/results/der_domain_mnist

Published: Buzzega et al., "Dark Experience for General Continual Learning: a Strong,
Simple Baseline", NeurIPS 2020, Table 2 (final average accuracy %, mean of 10 runs);
CLS-ER: Arani et al., ICLR 2022.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from ckd.reports.summary import load_results

CELLS = [
    ("Seq-MNIST class-IL", "split-mnist", "class"),
    ("Seq-MNIST task-IL", "split-mnist", "task"),
    ("P-MNIST domain-IL", "permuted-mnist", "class"),
    ("R-MNIST domain-IL", "rotated-mnist", "class"),
]
PUBLISHED = {  # (cell, buffer) -> {method: accuracy %}
    ("Seq-MNIST class-IL", 200): {"er": 80.43, "der": 84.55, "der++": 85.61, "cls-er": 89.54},
    ("Seq-MNIST class-IL", 500): {"er": 86.12, "der": 90.54, "der++": 91.00, "cls-er": 92.05},
    ("Seq-MNIST task-IL", 200): {"der++": 98.76},
    ("Seq-MNIST task-IL", 500): {"der++": 98.94},
    ("P-MNIST domain-IL", 200): {"er": 72.37, "der": 81.74, "der++": 83.58},
    ("P-MNIST domain-IL", 500): {"er": 80.60, "der": 87.29, "der++": 88.21},
    ("R-MNIST domain-IL", 200): {"er": 85.01, "der": 90.04, "der++": 90.43},
    ("R-MNIST domain-IL", 500): {"er": 88.91, "der": 92.24, "der++": 92.77},
}
PUBLISHED_NO_BUFFER = {
    "Seq-MNIST class-IL": {"sgd": 19.60, "joint": 95.57},
    "P-MNIST domain-IL": {"sgd": 40.70, "joint": 94.33},
    "R-MNIST domain-IL": {"sgd": 67.66, "joint": 95.76},
}
OURS = ["er", "der", "der++", "der++-authors", "kd-replay", "kd-replay-cached"]


def _accuracy(result: dict, kind: str) -> float | None:
    key = "final_average_task_il_accuracy" if kind == "task" else "final_average_accuracy"
    value = result.get(key)
    return None if value is None else 100 * value


def _both_ways(result: dict, kind: str) -> tuple[float | None, float | None]:
    """(accuracy with an EMA of the weights, accuracy of the trained weights), % (None: not scored so)."""
    scored = _accuracy(result, kind)
    if result.get("scored_model", "model") == "model":
        return None, scored
    trained = result.get("trained_weights")
    return scored, (_accuracy(trained, kind) if trained else None)


def collect(dirs: list[str]) -> dict:
    """(stream, kind, label) -> [(EMA accuracy, trained-weights accuracy) %] over seeds."""
    table: dict = defaultdict(list)
    for d in dirs:
        for r in load_results(d):
            for _, stream, kind in CELLS:
                if r["stream"] == stream:
                    ema, trained = _both_ways(r, kind)
                    if ema is not None or trained is not None:
                        table[(stream, kind, r["label"])].append((ema, trained))
    return table


def _fmt(values: list[float]) -> str:
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f} ({len(values)})"


def _fmt_both(pairs: list[tuple[float | None, float | None]]) -> str:
    """"EMA / trained weights" over the seeds that have each."""
    ema = [e for e, _ in pairs if e is not None]
    trained = [t for _, t in pairs if t is not None]
    if not ema and not trained:
        return "—"
    return f"{_fmt(ema)} / {_fmt(trained)}"


def markdown(dirs: list[str]) -> str:
    ours = collect(dirs)
    lines = [
        "| cell | buffer | ER pub. | DER pub. | DER++ pub. | CLS-ER pub. | "
        + " | ".join(f"{m} ours" for m in OURS) + " |",
        "| --- | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in OURS) + " |",
    ]
    for cell, stream, kind in CELLS:
        for mem in (200, 500):
            pub = PUBLISHED[(cell, mem)]
            row = [cell, str(mem)] + [f"{pub[m]:.2f}" if m in pub else "—" for m in ("er", "der", "der++", "cls-er")]
            row += [_fmt_both(ours.get((stream, kind, f"{m}@{mem}"), [])) for m in OURS]
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("| cell | SGD pub. | SGD ours | JOINT pub. | JOINT ours |")
    lines.append("| --- | ---: | ---: | ---: | ---: |")
    for cell, stream, kind in CELLS:
        if cell in PUBLISHED_NO_BUFFER:
            pub = PUBLISHED_NO_BUFFER[cell]
            lines.append(
                f"| {cell} | {pub['sgd']:.2f} | {_fmt_both(ours.get((stream, kind, 'sgd'), []))} | "
                f"{pub['joint']:.2f} | {_fmt_both(ours.get((stream, kind, 'joint'), []))} |"
            )
    lines.append("")
    lines.append("Ours: final average accuracy % on the test set, scored with an EMA of the weights / with the "
                 "trained weights, each mean ± sample std (number of seeds); — where a run was not scored that way.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="result folders")
    args = parser.parse_args(argv)
    print(markdown(args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
