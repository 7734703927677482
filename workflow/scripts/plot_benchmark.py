"""Snakemake script: the chart of a benchmark's results (:func:`pancreas_mtl.report.figures.plot_benchmark_files`)."""

from pancreas_mtl.report.figures import plot_benchmark_files
from pancreas_mtl.script_logging import run_logged


def main():
    plot_benchmark_files(snakemake.input.summary, snakemake.input.per_case, snakemake.output.chart)


run_logged(main, snakemake.log[0])
