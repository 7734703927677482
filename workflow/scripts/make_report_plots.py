"""Snakemake script: the report figures (training curves, confusion matrix, Dice distributions,
best/worst overlays, inference benchmark) from the workflow's result files.

All logic lives in :func:`pancreas_mtl.report.figures.make_report_figures`.
"""

from pancreas_mtl.report.figures import make_report_figures
from pancreas_mtl.script_logging import run_logged


def main():
    inp, out = snakemake.input, snakemake.output
    make_report_figures(
        stage1_checkpoint=inp.stage1_checkpoint,
        stage2_checkpoint=inp.stage2_checkpoint,
        segmentation_per_case=inp.segmentation_per_case,
        classification=inp.classification,
        case_table=inp.case_table,
        raw_dataset=inp.raw_dataset,
        predictions=inp.predictions,
        benchmark=inp.benchmark,
        benchmark_per_case=inp.benchmark_per_case,
        training_curves_png=out.training_curves,
        confusion_matrix_png=out.confusion_matrix,
        dice_distribution_png=out.dice_distribution,
        overlay_montage_png=out.overlay_montage,
        benchmark_png=out.benchmark,
    )


run_logged(main, snakemake.log[0])
