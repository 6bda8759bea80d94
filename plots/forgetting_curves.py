"""Accuracy on each test experience as a stream advances, one panel per method.

Usage: python plots/forgetting_curves.py RESULTS_DIR --out FILE.{png,pdf,svg} [--stream S]
"""

from ckd.reports.plotting import figure_main, plot_forgetting_curves

if __name__ == "__main__":
    figure_main(plot_forgetting_curves, __doc__.splitlines()[0])
