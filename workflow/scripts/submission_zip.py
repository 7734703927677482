from pancreas_mtl.inference.submission import make_submission_zip
from pancreas_mtl.script_logging import run_logged


def main():
    smk = snakemake
    make_submission_zip(smk.input.subtypes, smk.input.predictions, smk.output.archive)


run_logged(main, snakemake.log[0])
