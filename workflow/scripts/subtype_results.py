from pathlib import Path

import pandas as pd

from pancreas_mtl.inference.submission import write_subtype_results
from pancreas_mtl.script_logging import run_logged


def main():
    probabilities = pd.read_csv(Path(snakemake.input.predictions) / "class_probabilities.csv")
    write_subtype_results(probabilities, snakemake.output.subtypes)
    probabilities.to_csv(snakemake.output.probabilities, index=False)


run_logged(main, snakemake.log[0])
