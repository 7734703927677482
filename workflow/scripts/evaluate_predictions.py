"""Snakemake script: segmentation and classification metrics of the validation predictions.

Inputs: ``predictions`` (folder with ``{case_id}.nii.gz`` masks and ``class_probabilities.csv``),
``case_table``, ``raw_dataset``. Params: ``nsd_tolerance_mm``, ``extra`` (dict merged into the summary).
Output: ``summary`` (``.../summary.json``); the other result files are written beside it.
All logic lives in :func:`pancreas_mtl.evaluation.validation_report.evaluate_validation_predictions`.
"""

from pancreas_mtl.evaluation.validation_report import evaluate_validation_predictions
from pancreas_mtl.script_logging import run_logged


def main():
    smk = snakemake  # noqa: F821 - injected by Snakemake
    evaluate_validation_predictions(
        smk.input.predictions,
        smk.input.case_table,
        smk.input.raw_dataset,
        smk.output.summary,
        nsd_tolerance_mm=float(getattr(smk.params, "nsd_tolerance_mm", 2.0)),
        extra=getattr(smk.params, "extra", None),
        n_workers=int(getattr(smk, "threads", 1) or 1),
    )


if __name__ == "__main__":
    run_logged(main, snakemake.log[0])  # noqa: F821
