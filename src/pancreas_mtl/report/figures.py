"""The report's figures from the workflow's result files: what the ``report_plots`` rule runs.

:func:`make_report_figures` reads the checkpoints' training logs, the validation metrics, the case table,
the validation predictions and the benchmark results, and draws every figure with
:mod:`pancreas_mtl.report.plots`; :func:`overlay_cases` picks the cases of the overlay montage.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from pancreas_mtl.data.case_table import read_case_table
from pancreas_mtl.data.quiz_layout import mask_file_name
from pancreas_mtl.errors import UserInputError
from pancreas_mtl.evaluation.summary import read_segmentation_per_case
from pancreas_mtl.report import plots

log = logging.getLogger(__name__)

#: how many best and how many worst validation cases the overlay montage shows
N_BEST_WORST = 2


def overlay_cases(
    per_case: pd.DataFrame,
    case_table: pd.DataFrame,
    raw_dataset: str | Path,
    predictions: str | Path,
    n: int = N_BEST_WORST,
) -> list[dict]:
    """The ``n`` best and ``n`` worst validation cases by whole-pancreas Dice (best first, then worst).

    Only cases with a defined Dice and a prediction file count; a case is shown once even when it is
    among both the best and the worst. Each entry holds ``case_id``, ``image``, ``reference``,
    ``prediction`` (paths), ``dice`` and ``label`` ("best" or "worst"), as
    :func:`~pancreas_mtl.report.plots.plot_overlay_montage` takes them.
    """
    raw_dataset, predictions = Path(raw_dataset), Path(predictions)
    whole = per_case[per_case["region"].astype(str) == "whole"].copy()
    whole["dice"] = pd.to_numeric(whole["dice"], errors="coerce")
    whole = whole.dropna(subset=["dice"])
    whole = whole[whole["case_id"].map(lambda c: (predictions / mask_file_name(c)).is_file())]
    if whole.empty:
        raise UserInputError(f"no validation case has both a whole-pancreas Dice and a prediction in {predictions}")
    ranked = whole.sort_values(["dice", "case_id"], ascending=[False, True])
    chosen = [(row, "best") for row in ranked.head(n).itertuples()]
    taken = {row.case_id for row, _ in chosen}
    worst = [row for row in ranked.iloc[::-1].head(n).itertuples() if row.case_id not in taken]
    chosen += [(row, "worst") for row in reversed(worst)]
    table = case_table.set_index("case_id")
    cases = []
    for row, label in chosen:
        if row.case_id not in table.index:
            raise UserInputError(f"case {row.case_id} of the per-case table is not in the case table")
        entry = table.loc[row.case_id]
        cases.append(
            {
                "case_id": row.case_id,
                "image": raw_dataset / entry["image"],
                "reference": raw_dataset / entry["mask"],
                "prediction": predictions / mask_file_name(row.case_id),
                "dice": float(row.dice),
                "label": label,
            }
        )
    return cases


def with_subtypes(per_case: pd.DataFrame, case_table: pd.DataFrame) -> pd.DataFrame:
    """The per-case table with each case's true ``subtype`` from the case table (unless it has one)."""
    if "subtype" in per_case.columns:
        return per_case
    return per_case.merge(case_table[["case_id", "subtype"]], on="case_id", how="left")


def read_benchmark_results(summary_json: str | Path, per_case_csv: str | Path) -> tuple[dict, pd.DataFrame | None]:
    """The benchmark's summary dict and its per-case timings (None when the CSV is empty)."""
    benchmark = json.loads(Path(summary_json).read_text())
    try:
        per_case = pd.read_csv(per_case_csv)
    except pd.errors.EmptyDataError:
        per_case = None
    return benchmark, per_case


def plot_benchmark_files(summary_json: str | Path, per_case_csv: str | Path, out_png: str | Path) -> Path:
    """:func:`~pancreas_mtl.report.plots.plot_benchmark` of the benchmark's result files."""
    return plots.plot_benchmark(*read_benchmark_results(summary_json, per_case_csv), out_png)


def make_report_figures(
    *,
    stage1_checkpoint: str | Path,
    segmentation_per_case: str | Path,
    case_table: str | Path,
    raw_dataset: str | Path,
    predictions: str | Path,
    training_curves_png: str | Path,
    dice_distribution_png: str | Path,
    overlay_montage_png: str | Path,
    stage2_checkpoint: str | Path | None = None,
    classification: str | Path | None = None,
    confusion_matrix_png: str | Path | None = None,
    benchmark: str | Path | None = None,
    benchmark_per_case: str | Path | None = None,
    benchmark_png: str | Path | None = None,
) -> dict[str, Path]:
    """Draw the report figures, in this order: training curves (each stage's checkpoint), confusion matrix
    (``classification.json``), Dice distributions (per-case table with the true subtypes), best/worst overlays and
    the inference benchmark. A segmentation-only run has no stage 2, classification or benchmark: those are None
    and their figures are not drawn. Returns ``{figure name: PNG path}``."""
    stage_logs = {"stage 1": plots.load_stage_logging(stage1_checkpoint)}
    if stage2_checkpoint is not None:
        stage_logs["stage 2"] = plots.load_stage_logging(stage2_checkpoint)
    out = {"training_curves": plots.plot_training_curves(stage_logs, training_curves_png)}
    log.info("training curves -> %s", out["training_curves"])

    if classification is not None:
        cls = json.loads(Path(classification).read_text())
        out["confusion_matrix"] = plots.plot_confusion_matrix(
            cls["confusion_matrix"], confusion_matrix_png, macro_f1=cls.get("macro_f1")
        )
        log.info("confusion matrix -> %s", out["confusion_matrix"])

    cases = read_case_table(case_table)
    per_case = with_subtypes(read_segmentation_per_case(segmentation_per_case), cases)
    out["dice_distribution"] = plots.plot_dice_distributions(per_case, dice_distribution_png)
    log.info("Dice distributions -> %s", out["dice_distribution"])

    montage = overlay_cases(per_case, cases, raw_dataset, predictions)
    out["overlay_montage"] = plots.plot_overlay_montage(montage, overlay_montage_png)
    log.info(
        "overlay montage (%s) -> %s", ", ".join(f"{c['case_id']} {c['label']}" for c in montage), out["overlay_montage"]
    )

    if benchmark is not None:
        out["benchmark"] = plot_benchmark_files(benchmark, benchmark_per_case, benchmark_png)
        log.info("benchmark -> %s", out["benchmark"])
    return out
