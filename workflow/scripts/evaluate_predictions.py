"""Snakemake script: segmentation and classification metrics of the validation predictions.

Inputs: ``predictions`` (folder with ``{case_id}.nii.gz`` masks and ``class_probabilities.csv``),
``case_table`` (``case_id,split,subtype,image,mask``; ``mask`` relative to ``raw_dataset``),
``raw_dataset``. Params: ``nsd_tolerance_mm``, ``extra`` (dict merged into the summary).
Output: ``summary`` (``.../summary.json``); the other result files are written beside it.
All logic lives in :mod:`pancreas_mtl.evaluation`; see its modules for the metric definitions.
"""

import logging
from pathlib import Path

from pancreas_mtl.errors import UserInputError
from pancreas_mtl.evaluation.classification import (
    classification_metrics,
    read_case_table,
    read_probabilities_csv,
)
from pancreas_mtl.evaluation.segmentation import evaluate_segmentation, summarize_segmentation
from pancreas_mtl.evaluation.summary import write_json, write_metrics
from pancreas_mtl.script_logging import run_logged

log = logging.getLogger("pancreas_mtl.evaluate_predictions")
PROBABILITIES_FILE = "class_probabilities.csv"


def main():
    smk = snakemake  # noqa: F821 - injected by Snakemake
    predictions = Path(smk.input.predictions)
    raw_dataset = Path(smk.input.raw_dataset)
    case_table_path = Path(smk.input.case_table)
    summary_path = Path(smk.output.summary)
    tolerance = float(getattr(smk.params, "nsd_tolerance_mm", 2.0))
    extra = dict(getattr(smk.params, "extra", None) or {})
    threads = int(getattr(smk, "threads", 1) or 1)

    cases = read_case_table(case_table_path)
    validation = cases[cases["split"] == "validation"].reset_index(drop=True)
    if validation.empty:
        raise UserInputError(f"{case_table_path}: no rows with split == 'validation'")
    no_subtype = validation.loc[validation["subtype"].isna(), "case_id"].tolist()
    no_mask = validation.loc[validation["mask"].fillna("").astype(str).str.strip() == "", "case_id"].tolist()
    if no_subtype or no_mask:
        raise UserInputError(f"{case_table_path}: incomplete validation rows",
                             [f"{c}: no subtype" for c in no_subtype] + [f"{c}: no mask" for c in no_mask])

    pairs = [(row.case_id, predictions / f"{row.case_id}.nii.gz", raw_dataset / row.mask)
             for row in validation.itertuples(index=False)]
    extra_masks = sorted(p.name for p in predictions.glob("*.nii.gz")
                         if p.name[: -len(".nii.gz")] not in set(validation["case_id"]))
    if extra_masks:
        log.info("ignoring %d prediction(s) of non-validation cases: %s", len(extra_masks),
                 ", ".join(extra_masks[:10]))
    seg_table = evaluate_segmentation(pairs, nsd_tolerance_mm=tolerance, n_workers=threads)
    seg_summary = summarize_segmentation(seg_table)

    probabilities = read_probabilities_csv(predictions / PROBABILITIES_FILE).set_index("case_id")
    missing = [c for c in validation["case_id"] if c not in probabilities.index]
    if missing:
        raise UserInputError(
            f"{predictions / PROBABILITIES_FILE}: no class probabilities for {len(missing)} validation "
            f"case(s): {', '.join(missing)}")
    probs = probabilities.loc[validation["case_id"], ["prob_0", "prob_1", "prob_2"]].to_numpy(dtype=float)
    cls = classification_metrics(validation["subtype"].astype(int).tolist(), probs)
    cls["per_case"] = [
        {"case_id": c, "subtype": int(t), "predicted_subtype": int(p), "prob_0": q[0], "prob_1": q[1], "prob_2": q[2]}
        for c, t, p, q in zip(validation["case_id"], validation["subtype"],
                              probabilities.loc[validation["case_id"], "predicted_subtype"], probs.tolist())
    ]

    summary = write_metrics(summary_path.parent, seg_table, seg_summary, cls, extra,
                            nsd_tolerance_mm=tolerance)
    if summary_path.name != "summary.json":
        write_json(summary_path, summary)
    log.info("whole pancreas Dice %s, lesion Dice %s, macro-F1 %s over %d validation case(s); results in %s",
             _fmt(summary["whole_pancreas_dice_mean"]), _fmt(summary["lesion_dice_mean"]),
             _fmt(summary["macro_f1"]), len(validation), summary_path.parent)


def _fmt(value) -> str:
    return "undefined" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    run_logged(main, snakemake.log[0])  # noqa: F821
