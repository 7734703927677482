"""Snakemake script: validate the quiz folder's test images and copy them, with their table
(:func:`pancreas_mtl.data.conversion.convert_test_images`)."""

from pancreas_mtl.data.conversion import convert_test_images
from pancreas_mtl.script_logging import run_logged


def main():
    smk = snakemake
    convert_test_images(smk.params.quiz_dir, smk.output.images, smk.output.test_cases, n_workers=smk.threads)


# The guard keeps a worker process from re-running the conversion should it ever re-import this script as
# __mp_main__ (spawn start method); the pools themselves use fork where available.
if __name__ == "__main__":
    run_logged(main, snakemake.log[0])
