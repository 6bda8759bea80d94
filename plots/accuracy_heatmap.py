"""Seed-mean accuracy matrix of each method as an annotated heatmap.

Usage: python plots/accuracy_heatmap.py RESULTS_DIR --out FILE.{png,pdf,svg} [--stream S]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ckd.plotting import plot_accuracy_heatmaps
from ckd.summary import load_results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="directory of result JSONs (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="figure file; its suffix picks png, pdf or svg")
    parser.add_argument("--stream", default=None, help="stream to draw; needed when the results hold several")
    args = parser.parse_args(argv)
    try:
        path = plot_accuracy_heatmaps(load_results(args.results_dir), args.out, stream=args.stream)
    except (ValueError, NotADirectoryError) as err:
        parser.error(str(err))
    print(path)


if __name__ == "__main__":
    main()
