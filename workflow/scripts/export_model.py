"""Snakemake script: the trained model as one archive in nnU-Net's export layout, with its model card.

All logic lives in :mod:`pancreas_mtl.inference.model_archive`; see its docstring for the layout and the checks.
"""

import json
from pathlib import Path

from pancreas_mtl.data.case_table import case_counts
from pancreas_mtl.data.conversion import read_selection_cases
from pancreas_mtl.inference.model_archive import archive_members, model_card, write_model_archive
from pancreas_mtl.script_logging import run_logged


def main():
    params, inputs = snakemake.params, snakemake.input
    model_folder = Path(inputs.plans).parent
    members = archive_members(model_folder, params.folds, params.checkpoint, params.fingerprint)
    card = model_card(
        model=model_folder.name,
        stage=params.stage,
        folds=params.folds,
        checkpoint=params.checkpoint,
        case_counts=case_counts(inputs.case_table),
        selection_cases=read_selection_cases(inputs.splits, params.folds) if params.select_checkpoints else {},
        metrics=json.loads(Path(inputs.metrics).read_text()) if inputs.get("metrics") else None,
        inference=params.inference,
        lesion_prior=params.lesion_prior,
        config=params.config,
        commit=params.commit,
    )
    write_model_archive(members, card, snakemake.output.archive)


if __name__ == "__main__":
    run_logged(main, snakemake.log[0])
