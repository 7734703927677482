from pancreas_mtl.inference.submission import make_submission_zip
from pancreas_mtl.script_logging import run_logged


def main():
    make_submission_zip(snakemake.input.subtypes, snakemake.input.predictions, snakemake.output.archive)


run_logged(main, snakemake.log[0])
