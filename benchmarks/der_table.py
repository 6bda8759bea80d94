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

from ckd.summary import load_results

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
OURS = ["er", "der", "der++", "kd-replay", "kd-replay-cached"]


def _accuracy(result: dict, kind: str) -> float | None:
    key = "final_average_task_il_accuracy" if kind == "task" else "final_average_accuracy"
    value = result.get(key)
    return None if value is None else 100 * value


def collect(dirs: list[str]) -> dict:
    """(stream, kind, label) -> accuracies % over seeds."""
    table: dict = defaultdict(list)
    for d in dirs:
        for r in load_results(d):
            for _, stream, kind in CELLS:
                if r["stream"] == stream:
                    acc = _accuracy(r, kind)
                    if acc is not None:
                        table[(stream, kind, r["label"])].append(acc)
    return table


def _fmt(values: list[float]) -> str:
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f} ({len(values)})"


def markdown(dirs: list[str]) -> str:
    ours = collect(dirs)
    lines = [
        "| cell | buffer | ER pub. | DER pub. | DER++ pub. | CLS-ER pub. | ER ours | DER ours | DER++ ours | kd-replay | kd-replay-cached |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for cell, stream, kind in CELLS:
        for mem in (200, 500):
            pub = PUBLISHED[(cell, mem)]
            row = [cell, str(mem)] + [f"{pub[m]:.2f}" if m in pub else "—" for m in ("er", "der", "der++", "cls-er")]
            row += [_fmt(ours.get((stream, kind, f"{m}@{mem}"), [])) for m in OURS]
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("| cell | SGD pub. | SGD ours | JOINT pub. | JOINT ours |")
    lines.append("| --- | ---: | ---: | ---: | ---: |")
    for cell, stream, kind in CELLS:
        if cell in PUBLISHED_NO_BUFFER:
            pub = PUBLISHED_NO_BUFFER[cell]
            lines.append(
                f"| {cell} | {pub['sgd']:.2f} | {_fmt(ours.get((stream, kind, 'sgd'), []))} | "
                f"{pub['joint']:.2f} | {_fmt(ours.get((stream, kind, 'joint'), []))} |"
            )
    lines.append("")
    lines.append("Ours: mean ± sample std (number of seeds), final average accuracy % on the test set.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="result folders")
    args = parser.parse_args(argv)
    print(markdown(args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
