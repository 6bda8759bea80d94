"""The best setting of each method in each cell of a validation search, as a Markdown table.

    python benchmarks/tuning/pick.py benchmarks/results/tuning/equal_terms [--suite benchmarks/equal_terms.toml]

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

from ckd.reports.summary import load_results

METHODS = ("er-ace", "der++", "der", "kd-replay", "kd-multi-teacher", "er")  # a name before its prefixes: "er-ace" before "er"


def split_label(label: str) -> tuple[str, str, str]:
    """``(cell, method, setting)`` of a search label."""
    cell, _, rest = label.partition("-")
    for method in METHODS:
        if rest.startswith(method + "-"):
            return cell, method, rest[len(method) + 1 :]
    raise ValueError(f"label {label!r} names none of the methods {METHODS}")


def picks(results_dir: str) -> dict:
    """cell -> method -> (setting, way of scoring: "ema" or "trained"), the best mean validation accuracy."""
    chosen: dict = defaultdict(dict)
    for cell, methods in scores(results_dir).items():
        for method, settings in methods.items():
            rows = [(v[0] if way == "ema" else v[1], setting, way) for setting, v in settings.items()
                    for way in ("ema", "trained")]
            _, setting, way = max(rows)
            chosen[cell][method] = (setting, way)
    return chosen


def suite(results_dir: str, baseline_seeds: list[int], kd_seeds: list[int]) -> str:
    """A TOML suite running every pick on the test set: its search run's config without the
    validation split, labelled ``<runner method>@<buffer>``, scored as picked (with the EMA, which also
    scores the trained weights, or with the trained weights alone)."""
    import json
    from pathlib import Path

    from ckd.benchmarking.run_config import config_from_result

    configs = {}
    for path in Path(results_dir).glob("*__seed0.json"):
        result = json.loads(path.read_text())
        configs[result["label"]] = config_from_result(result)
    lines = ["# Every method's pick of the equal-terms search (benchmarks/tuning/equal_terms_search.toml) on the",
             "# test set; written by: python benchmarks/tuning/pick.py benchmarks/results/tuning/equal_terms --suite",
             "# benchmarks/equal_terms.toml. Each method is scored as it scored best on validation (an EMA of",
             "# its weights or its trained weights; the result holds both).", ""]
    for cell, methods in sorted(picks(results_dir).items(), key=lambda kv: _natural(kv[0])):
        for method, (setting, way) in sorted(methods.items()):
            config = configs[f"{cell}-{method}-{setting}"]
            seeds = kd_seeds if method.startswith("kd") else baseline_seeds
            buffer = cell.partition("@")[2]
            lines += ["[[run]]", f'method = "{config.method}"', f'label = "{config.method}@{buffer}"',
                      f'stream = "{config.stream}"', f"seeds = {seeds}", f"lr = {config.lr}",
                      f"batch_size = {config.batch_size}", f"epochs = {config.epochs}",
                      f"eval_ema_half_life = {config.eval_ema_half_life if way == 'ema' else 0.0}",
                      "[run.args]"]
            lines += [f"{k} = {json.dumps(v)}" for k, v in sorted(config.method_args.items())]
            lines.append("")
    return "\n".join(lines)


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
    parser.add_argument("--suite", default=None, help="also write a suite of the picks on the test set here")
    parser.add_argument("--baseline-seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--kd-seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    args = parser.parse_args(argv)
    print(markdown(args.results))
    if args.suite:
        from ckd.common.files import write_text_atomic

        write_text_atomic(args.suite, suite(args.results, args.baseline_seeds, args.kd_seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
