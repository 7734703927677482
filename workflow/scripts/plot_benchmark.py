import json

import pandas as pd

from pancreas_mtl.report.plots import plot_benchmark
from pancreas_mtl.script_logging import run_logged


def main():
    summary = json.loads(open(snakemake.input.summary).read())
    plot_benchmark(summary, pd.read_csv(snakemake.input.per_case), snakemake.output.chart)


run_logged(main, snakemake.log[0])
