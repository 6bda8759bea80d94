"""The distiller's dilemma of a temperature sweep: accuracy, agreement and teacher-wrong accuracy against T.

Usage: python plots/distillers_dilemma.py SWEEP_DIR --out FILE.{png,pdf,svg} [--stream S]
(SWEEP_DIR: the --out folder of `ckd sweep`.)
"""

from ckd.reports.plotting import figure_main, plot_distillers_dilemma

if __name__ == "__main__":
    figure_main(plot_distillers_dilemma, __doc__.splitlines()[0])
