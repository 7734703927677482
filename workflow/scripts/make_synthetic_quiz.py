"""Rule make_synthetic_quiz: write the seeded synthetic quiz dataset (pancreas_mtl.data.synthetic)."""

from pancreas_mtl.data.synthetic import make_synthetic_quiz
from pancreas_mtl.script_logging import run_logged


def main():
    make_synthetic_quiz(
        snakemake.output.quiz_dir,
        seed=snakemake.params.seed,
        counts=snakemake.params.counts,
        n_workers=snakemake.threads,
    )


run_logged(main, snakemake.log[0])
