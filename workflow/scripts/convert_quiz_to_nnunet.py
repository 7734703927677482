"""Snakemake script: validate the quiz folder and convert it to an nnU-Net v2 raw dataset.

All logic lives in :mod:`pancreas_mtl.data.conversion`; see its docstring for what is written.
"""

from pancreas_mtl.data.conversion import convert_quiz_to_nnunet
from pancreas_mtl.script_logging import run_logged


def main():
    convert_quiz_to_nnunet(
        snakemake.params.quiz_dir,
        snakemake.output.raw_dataset,
        snakemake.output.splits,
        snakemake.output.case_table,
        dataset_name=snakemake.wildcards.dataset,
        n_workers=snakemake.threads,
        # a split or subtype folder may be missing: what the folder lacks was judged at start-up (the workflow's
        # folder check refuses it or leaves the targets out), and the real-scale sample is a partial folder
        allow_partial=True,
        split_scheme=snakemake.params.split_scheme,
        k=snakemake.params.k,
        split_seed=snakemake.params.split_seed,
        selection_fraction=snakemake.params.selection_fraction,
        labels=snakemake.params.labels,
    )


# The guard keeps a worker process from re-running the conversion should it ever re-import this
# script as __mp_main__ (spawn start method); the pools themselves use fork where available.
if __name__ == "__main__":
    run_logged(main, snakemake.log[0])
