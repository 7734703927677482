"""Snakemake script: the handout's subtype_results.csv from the test predictions' class probabilities,
and a copy of those probabilities (checked by :mod:`pancreas_mtl.data.class_probabilities`)."""

import shutil

from pancreas_mtl.data.class_probabilities import (
    class_probabilities_path,
    read_class_probabilities,
)
from pancreas_mtl.inference.submission import write_subtype_results
from pancreas_mtl.script_logging import run_logged


def main():
    predictions = snakemake.input.predictions
    write_subtype_results(read_class_probabilities(predictions), snakemake.output.subtypes)
    shutil.copyfile(class_probabilities_path(predictions), snakemake.output.probabilities)


run_logged(main, snakemake.log[0])
