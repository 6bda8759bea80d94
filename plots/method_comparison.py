"""Final average accuracy and forgetting per method, with error bars over seeds.

Usage: python plots/method_comparison.py RESULTS_DIR --out FILE.{png,pdf,svg} [--stream S]
"""

from ckd.reports.plotting import figure_main, plot_method_comparison

if __name__ == "__main__":
    figure_main(plot_method_comparison, __doc__.splitlines()[0])
