"""Snakemake script: segmentation and classification metrics of the validation predictions.

Inputs: ``predictions`` (folder with ``{case_id}.nii.gz`` masks and, unless ``classification`` is false,
``class_probabilities.csv``),
``case_table``, ``splits`` (which cases selected each fold's checkpoint: recorded in the summary),
``raw_dataset``. Params: ``folds``, ``nsd_tolerance_mm``, ``classification`` (False for a segmentation model),
``extra`` (dict merged into the summary).
Output: ``summary`` (``.../summary.json``); the other result files are written beside it.
All logic lives in :func:`pancreas_mtl.evaluation.validation_report.evaluate_validation_predictions`.
"""

from pancreas_mtl.data.conversion import read_selection_cases
from pancreas_mtl.evaluation.validation_report import evaluate_validation_predictions
from pancreas_mtl.script_logging import run_logged


def main():
    smk = snakemake
    evaluate_validation_predictions(
        smk.input.predictions,
        smk.input.case_table,
        smk.input.raw_dataset,
        smk.output.summary,
        nsd_tolerance_mm=smk.params.nsd_tolerance_mm,
        extra={
            **smk.params.extra,
            "checkpoint_selection_cases": read_selection_cases(smk.input.splits, smk.params.folds),
        },
        n_workers=smk.threads,
        classification=smk.params.classification,
    )


if __name__ == "__main__":
    run_logged(main, snakemake.log[0])
