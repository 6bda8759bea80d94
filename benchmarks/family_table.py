"""What each kind of knowledge adds: the distillation family against kd-replay alone, as Markdown.

    python benchmarks/family_table.py benchmarks/results/distillation_family \
        --cost benchmarks/results/family_cost_cpu.json

Accuracy and forgetting (best-ever minus final) are mean ± sample std over seeds
of the suite's runs; time per iteration and the memory kept between experiences
come from ``benchmarks/speed.py --family`` (all methods timed side by side in
one process), as ratios to kd-replay.
"""

from __future__ import annotations

import argparse
import json

from ckd.reports.summary import load_results, summarize

STREAMS = {"split-mnist": "Seq-MNIST", "split-fmnist": "Split-FMNIST"}
# label in the suite -> (key in the cost JSON, what the variant adds)
VARIANTS = {
    "kd-replay": ("kd_replay", "response: soft KL on replayed samples (the base)"),
    "kd-replay-cached": ("kd_replay_cached", "same, teacher logits stored in the buffer"),
    "kd-feature": ("kd_feature", "+ feature: L2 on penultimate activations"),
    "kd-relation": ("kd_relation", "+ relation: RKD distance + angle"),
    "kd-replay-lwf": ("kd_replay_lwf", "+ current data: soft KL on the new samples (LwF)"),
    "kd-multi-teacher-own": ("kd_multi_teacher_own", "4 teachers, each sample's own"),
    "kd-multi-teacher-average": ("kd_multi_teacher_average", "4 teachers, mean of softened probabilities"),
    "kd-lwf": ("kd_lwf", "current data only, no buffer (LwF)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results")
    parser.add_argument("--cost", default=None, help="JSON written by benchmarks/speed.py --family")
    args = parser.parse_args(argv)
    rows = summarize(load_results(args.results))
    cost = json.loads(open(args.cost).read()) if args.cost else None
    by_label = {(r["stream"], r["label"]): r for r in rows}
    header = "| variant | what it adds | " + " | ".join(
        f"{name} ACC (%) | Δ ACC | {name} forgetting (%)" for name in STREAMS.values()
    )
    columns = 2 + 3 * len(STREAMS)
    if cost:
        header += " | time / iteration | memory kept"
        columns += 2
    print(header + " |")
    print("| --- | --- |" + " ---: |" * (columns - 2))
    for label, (key, what) in VARIANTS.items():
        cells = [f"`{label}`", what]
        for stream in STREAMS:
            row, base = by_label.get((stream, label)), by_label.get((stream, "kd-replay"))
            if row is None:
                cells += ["—", "—", "—"]
                continue
            acc, std = 100 * row["final_average_accuracy_mean"], 100 * row["final_average_accuracy_std"]
            delta = "" if base is None or label == "kd-replay" else f"{acc - 100 * base['final_average_accuracy_mean']:+.2f}"
            fgt, fstd = 100 * row["average_forgetting_mean"], 100 * row["average_forgetting_std"]
            cells += [f"{acc:.2f} ± {std:.2f} ({row['n_seeds']})", delta, f"{fgt:.2f} ± {fstd:.2f}"]
        if cost:
            time_ratio = cost["time_vs_kd_replay"].get(key)
            state = cost["state_mb"].get(key)
            cells.append("—" if time_ratio is None else f"{time_ratio:.2f}×")
            cells.append("—" if state is None else f"{sum(state.values()):.2f} MB ({cost['state_vs_kd_replay'][key]:.2f}×)")
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
