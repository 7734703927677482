"""Snakemake script: the report figures (training curves, confusion matrix, Dice distributions,
best/worst overlays, inference benchmark) from the workflow's result files."""

import json
import logging
from pathlib import Path

import pandas as pd

from pancreas_mtl.errors import UserInputError
from pancreas_mtl.report import plots
from pancreas_mtl.script_logging import run_logged

N_BEST_WORST = 2


def overlay_cases(per_case: pd.DataFrame, case_table: pd.DataFrame, raw_dataset: Path,
                  predictions: Path) -> list[dict]:
    """The 2 best and 2 worst validation cases by whole-pancreas Dice (best first, then worst)."""
    whole = per_case[per_case["region"].astype(str) == "whole"].copy()
    whole["dice"] = pd.to_numeric(whole["dice"], errors="coerce")
    whole = whole.dropna(subset=["dice"])
    whole = whole[whole["case_id"].map(lambda c: (predictions / f"{c}.nii.gz").is_file())]
    if whole.empty:
        raise UserInputError(f"no validation case has both a whole-pancreas Dice and a prediction in {predictions}")
    ranked = whole.sort_values(["dice", "case_id"], ascending=[False, True])
    chosen = [(row, "best") for row in ranked.head(N_BEST_WORST).itertuples()]
    taken = {row.case_id for row, _ in chosen}
    worst = [row for row in ranked.iloc[::-1].head(N_BEST_WORST).itertuples() if row.case_id not in taken]
    chosen += [(row, "worst") for row in reversed(worst)]
    table = case_table.set_index("case_id")
    cases = []
    for row, label in chosen:
        if row.case_id not in table.index:
            raise UserInputError(f"case {row.case_id} of the per-case table is not in the case table")
        entry = table.loc[row.case_id]
        cases.append({
            "case_id": row.case_id,
            "image": raw_dataset / entry["image"],
            "reference": raw_dataset / entry["mask"],
            "prediction": predictions / f"{row.case_id}.nii.gz",
            "dice": float(row.dice),
            "label": label,
        })
    return cases


def main():
    log = logging.getLogger("pancreas_mtl")
    inp, out = snakemake.input, snakemake.output

    stage_logs = {
        "stage 1": plots.load_stage_logging(inp.stage1_checkpoint),
        "stage 2": plots.load_stage_logging(inp.stage2_checkpoint),
    }
    log.info("training curves -> %s", plots.plot_training_curves(stage_logs, out.training_curves))

    classification = json.loads(Path(inp.classification).read_text())
    log.info("confusion matrix -> %s", plots.plot_confusion_matrix(
        classification["confusion_matrix"], out.confusion_matrix, macro_f1=classification.get("macro_f1"),
    ))

    per_case = pd.read_csv(inp.segmentation_per_case)
    case_table = pd.read_csv(inp.case_table)
    if "subtype" not in per_case.columns and "subtype" in case_table.columns:
        per_case = per_case.merge(case_table[["case_id", "subtype"]], on="case_id", how="left")
    log.info("Dice distributions -> %s", plots.plot_dice_distributions(per_case, out.dice_distribution))

    cases = overlay_cases(per_case, case_table, Path(inp.raw_dataset), Path(inp.predictions))
    log.info("overlay montage (%s) -> %s", ", ".join(f"{c['case_id']} {c['label']}" for c in cases),
             plots.plot_overlay_montage(cases, out.overlay_montage))

    benchmark = json.loads(Path(inp.benchmark).read_text())
    try:
        benchmark_per_case = pd.read_csv(inp.benchmark_per_case)
    except pd.errors.EmptyDataError:
        benchmark_per_case = None
    log.info("benchmark -> %s", plots.plot_benchmark(benchmark, benchmark_per_case, out.benchmark))


run_logged(main, snakemake.log[0])
