"""The best setting of each method in each cell of a validation search, as a Markdown table.

    python benchmarks/tuning/pick.py benchmarks/results/tuning/equal_terms

Labels name ``<cell>-<method>-<setting>`` (``seqmnist@200-der++-lr0.03-a0.2-b1.0``); every setting's
score is its mean validation accuracy over the search's seeds, scored with the EMA of the weights
(the runner's default) and with the trained weights. The pick is the best of both: a setting and
the way to score it, the same choice for every method; the runner-up is listed for context.
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections import defaultdict

from ckd.summary import load_results

METHODS = ("er-ace", "der++", "der", "kd-replay", "er")  # a name before its prefixes: "er-ace" before "er"


def split_label(label: str) -> tuple[str, str, str]:
    """``(cell, method, setting)`` of a search label."""
    cell, _, rest = label.partition("-")
    for method in METHODS:
        if rest.startswith(method + "-"):
            return cell, method, rest[len(method) + 1 :]
    raise ValueError(f"label {label!r} names none of the methods {METHODS}")


def scores(results_dir: str) -> dict:
    """cell -> method -> setting -> (mean EMA accuracy %, mean trained-weights accuracy %, seeds)."""
    runs: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for result in load_results(results_dir):
        cell, method, setting = split_label(result["label"])
        trained = result.get("trained_weights") or result
        runs[cell][method][setting].append((result["final_average_accuracy"], trained["final_average_accuracy"]))
    return {
        cell: {
            method: {
                setting: (100 * statistics.mean(e for e, _ in v), 100 * statistics.mean(t for _, t in v), len(v))
                for setting, v in settings.items()
            }
            for method, settings in methods.items()
        }
        for cell, methods in runs.items()
    }


def _natural(text: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def markdown(results_dir: str) -> str:
    lines = [
        "| cell | method | settings searched | pick, scored with | EMA (%) | trained weights (%) | runner-up |",
        "| --- | --- | ---: | --- | ---: | ---: | --- |",
    ]
    for cell, methods in sorted(scores(results_dir).items(), key=lambda kv: _natural(kv[0])):
        for method, settings in sorted(methods.items()):
            ranked = sorted(
                ((setting, way, score[0] if way == "ema" else score[1], score) for setting, score in settings.items()
                 for way in ("ema", "trained")),
                key=lambda row: -row[2],
            )
            best, way, _, (ema, trained, n) = ranked[0]
            second = next((f"{s} {w} ({v:.2f})" for s, w, v, _ in ranked[1:] if s != best), "—")
            lines.append(f"| {cell} | {method} | {len(settings)} | {best}, {way} | {ema:.2f} | {trained:.2f} | {second} |")
    lines.append("")
    lines.append("Mean final average accuracy on the validation split over the search's seeds (n per setting).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="the search's result folder")
    print(markdown(parser.parse_args(argv).results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
