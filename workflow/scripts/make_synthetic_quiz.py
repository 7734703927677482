"""Rule make_synthetic_quiz: write the seeded synthetic quiz dataset (pancreas_mtl.data.synthetic)."""

from pancreas_mtl.data.synthetic import make_synthetic_quiz
from pancreas_mtl.script_logging import run_logged


def main():
    smk = snakemake  # noqa: F821 - injected by Snakemake
    make_synthetic_quiz(
        smk.output.quiz_dir,
        seed=smk.params.seed,
        counts=smk.params.counts,
        n_workers=smk.threads,
    )


run_logged(main, snakemake.log[0])  # noqa: F821
