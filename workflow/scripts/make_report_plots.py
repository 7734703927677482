"""Snakemake script: the report figures (training curves, confusion matrix, Dice distributions,
best/worst overlays, inference benchmark; a segmentation-only run without the confusion matrix and the benchmark)
from the workflow's result files.

All logic lives in :func:`pancreas_mtl.report.figures.make_report_figures`.
"""

from pancreas_mtl.report.figures import make_report_figures
from pancreas_mtl.script_logging import run_logged


def main():
    inp, out = snakemake.input, snakemake.output
    # a segmentation-only run has no stage 2, classification or benchmark (the rule leaves them out)
    make_report_figures(
        stage1_checkpoint=inp.stage1_checkpoint,
        segmentation_per_case=inp.segmentation_per_case,
        case_table=inp.case_table,
        raw_dataset=inp.raw_dataset,
        predictions=inp.predictions,
        training_curves_png=out.training_curves,
        dice_distribution_png=out.dice_distribution,
        overlay_montage_png=out.overlay_montage,
        stage2_checkpoint=getattr(inp, "stage2_checkpoint", None),
        classification=getattr(inp, "classification", None),
        confusion_matrix_png=getattr(out, "confusion_matrix", None),
        benchmark=getattr(inp, "benchmark", None),
        benchmark_per_case=getattr(inp, "benchmark_per_case", None),
        benchmark_png=getattr(out, "benchmark", None),
    )


run_logged(main, snakemake.log[0])
