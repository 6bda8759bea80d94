"""Seed-mean accuracy matrix of each method as an annotated heatmap.

Usage: python plots/accuracy_heatmap.py RESULTS_DIR --out FILE.{png,pdf,svg} [--stream S]
"""

from ckd.reports.plotting import figure_main, plot_accuracy_heatmaps

if __name__ == "__main__":
    figure_main(plot_accuracy_heatmaps, __doc__.splitlines()[0])
