"""Snakemake script: validate the quiz folder and convert it to an nnU-Net v2 raw dataset.

All logic lives in :mod:`pancreas_mtl.data.conversion`; see its docstring for what is written.
"""

from pancreas_mtl.data.conversion import convert_quiz_to_nnunet
from pancreas_mtl.script_logging import run_logged


def main():
    convert_quiz_to_nnunet(
        snakemake.params.quiz_dir,  # noqa: F821 - injected by Snakemake
        snakemake.output.raw_dataset,  # noqa: F821
        snakemake.output.splits,  # noqa: F821
        snakemake.output.case_table,  # noqa: F821
        dataset_name=snakemake.wildcards.dataset,  # noqa: F821
        n_workers=snakemake.threads,  # noqa: F821
        allow_partial=snakemake.params.allow_partial,  # noqa: F821
        split_scheme=snakemake.params.split_scheme,  # noqa: F821
        k=snakemake.params.k,  # noqa: F821
        split_seed=snakemake.params.split_seed,  # noqa: F821
        selection_fraction=snakemake.params.selection_fraction,  # noqa: F821
    )


# The guard keeps a worker process from re-running the conversion should it ever re-import this
# script as __mp_main__ (spawn start method); the pools themselves use fork where available.
if __name__ == "__main__":
    run_logged(main, snakemake.log[0])  # noqa: F821
