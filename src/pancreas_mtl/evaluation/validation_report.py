"""Metrics of a folder of validation predictions: what the workflow's ``evaluate_validation`` rule runs.

:func:`evaluate_validation_predictions` takes the validation rows of the case table
(:mod:`pancreas_mtl.data.case_table`), scores each ``{case_id}.nii.gz`` prediction against its reference
mask (:mod:`~pancreas_mtl.evaluation.segmentation`) and the folder's ``class_probabilities.csv``
(:mod:`pancreas_mtl.data.class_probabilities`) against the true subtypes
(:mod:`~pancreas_mtl.evaluation.classification`), and writes the result files of
:mod:`~pancreas_mtl.evaluation.summary` next to ``summary_path``. Predictions of cases that are not
validation cases (e.g. test cases) are ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from pancreas_mtl.data.case_table import split_cases
from pancreas_mtl.data.class_probabilities import (
    PROBABILITY_COLUMNS,
    class_probabilities_path,
    read_class_probabilities,
)
from pancreas_mtl.data.lesion_prior_record import WITHOUT_PRIOR_FOLDER, read_prior_record
from pancreas_mtl.data.quiz_layout import NIFTI_SUFFIX, mask_file_name
from pancreas_mtl.errors import UserInputError
from pancreas_mtl.evaluation.classification import classification_metrics
from pancreas_mtl.evaluation.segmentation import (
    evaluate_segmentation,
    summarize_segmentation,
)
from pancreas_mtl.evaluation.summary import (
    SUMMARY_FILE,
    prior_effect,
    write_json,
    write_metrics,
    write_prior_effect,
)

log = logging.getLogger(__name__)


def validation_cases(case_table: str | Path, classification: bool = True) -> pd.DataFrame:
    """The validation rows of the case table; each must have a mask, and a subtype where ``classification``."""
    validation = split_cases(case_table, "validation")
    if validation.empty:
        raise UserInputError(f"{case_table}: no rows with split == 'validation'")
    no_subtype = validation.loc[validation["subtype"].isna(), "case_id"].tolist() if classification else []
    no_mask = validation.loc[validation["mask"].fillna("").astype(str).str.strip() == "", "case_id"].tolist()
    if no_subtype or no_mask:
        raise UserInputError(
            f"{case_table}: incomplete validation rows",
            [f"{c}: no subtype" for c in no_subtype] + [f"{c}: no mask" for c in no_mask],
        )
    return validation


def _classification(validation: pd.DataFrame, predictions_dir: Path) -> dict:
    """Classification metrics of the validation cases, with a ``per_case`` list of their probabilities."""
    probabilities = read_class_probabilities(predictions_dir).set_index("case_id")
    missing = [c for c in validation["case_id"] if c not in probabilities.index]
    if missing:
        raise UserInputError(
            f"{class_probabilities_path(predictions_dir)}: no class probabilities for {len(missing)} validation "
            f"case(s): {', '.join(missing)}"
        )
    rows = probabilities.loc[validation["case_id"]]
    probs = rows[PROBABILITY_COLUMNS].to_numpy(dtype=float)
    cls = classification_metrics(validation["subtype"].astype(int).tolist(), probs)
    cls["per_case"] = [
        {"case_id": c, "subtype": int(t), "predicted_subtype": int(p), **dict(zip(PROBABILITY_COLUMNS, q))}
        for c, t, p, q in zip(validation["case_id"], validation["subtype"], rows["predicted_subtype"], probs.tolist())
    ]
    return cls


def evaluate_validation_predictions(
    predictions_dir: str | Path,
    case_table: str | Path,
    raw_dataset: str | Path,
    summary_path: str | Path,
    nsd_tolerance_mm: float,
    extra: dict | None = None,
    n_workers: int = 1,
    classification: bool = True,
) -> dict:
    """Score the validation predictions and write the metrics files; return the ``summary.json`` dict.

    ``predictions_dir`` holds ``{case_id}.nii.gz`` masks and ``class_probabilities.csv`` (not read, and no
    classification metrics written, with ``classification=False``: a segmentation model's predictions); the reference
    masks are the case table's ``mask`` paths under ``raw_dataset``. The four files of
    :func:`~pancreas_mtl.evaluation.summary.write_metrics` go to ``summary_path``'s folder (the summary is
    also written to ``summary_path`` itself when it is not named ``summary.json``). ``extra`` is merged
    into the summary; ``n_workers`` processes compute the segmentation metrics.
    """
    predictions_dir, raw_dataset, summary_path = Path(predictions_dir), Path(raw_dataset), Path(summary_path)
    validation = validation_cases(case_table, classification)
    expected = {mask_file_name(c) for c in validation["case_id"]}
    pairs = [
        (row.case_id, predictions_dir / mask_file_name(row.case_id), raw_dataset / row.mask)
        for row in validation.itertuples(index=False)
    ]
    ignored = sorted(p.name for p in predictions_dir.glob(f"*{NIFTI_SUFFIX}") if p.name not in expected)
    if ignored:
        log.info("ignoring %d prediction(s) of non-validation cases: %s", len(ignored), ", ".join(ignored[:10]))
    seg_table = evaluate_segmentation(pairs, nsd_tolerance_mm=nsd_tolerance_mm, n_workers=n_workers)
    seg_summary = summarize_segmentation(seg_table)
    cls = _classification(validation, predictions_dir) if classification else None
    effect, prior_keys = _lesion_prior_effect(
        predictions_dir, pairs, seg_table, seg_summary, nsd_tolerance_mm, n_workers
    )

    summary = write_metrics(
        summary_path.parent,
        seg_table,
        seg_summary,
        cls,
        {**prior_keys, **dict(extra or {})},
        nsd_tolerance_mm=nsd_tolerance_mm,
    )
    write_prior_effect(summary_path.parent, effect)
    if summary_path.name != SUMMARY_FILE:
        write_json(summary_path, summary)
    log.info(
        "whole pancreas Dice %s, lesion Dice %s%s over %d validation case(s); results in %s",
        _fmt(summary["whole_pancreas_dice_mean"]),
        _fmt(summary["lesion_dice_mean"]),
        f", macro-F1 {_fmt(summary['macro_f1'])}" if classification else "",
        len(validation),
        summary_path.parent,
    )
    return summary


def scores_without_prior(
    predictions_dir: Path,
    changed: list[str],
    references: Mapping[str, Path],
    seg_table: pd.DataFrame,
    nsd_tolerance_mm: float,
    n_workers: int = 1,
) -> pd.DataFrame:
    """The per-case table as it would be without the lesion-presence prior: the ``changed`` cases scored again on
    their masks as predicted before it (``without_lesion_prior/`` of ``predictions_dir``), the others as they are."""
    if not changed:
        return seg_table
    before = [(c, Path(predictions_dir) / WITHOUT_PRIOR_FOLDER / mask_file_name(c), references[c]) for c in changed]
    rescored = evaluate_segmentation(before, nsd_tolerance_mm=nsd_tolerance_mm, n_workers=n_workers)
    return pd.concat([seg_table[~seg_table["case_id"].isin(changed)], rescored], ignore_index=True)


def _lesion_prior_effect(
    predictions_dir: Path,
    pairs: list,
    seg_table: pd.DataFrame,
    seg_summary: dict,
    nsd_tolerance_mm: float,
    n_workers: int,
) -> tuple[pd.DataFrame, dict]:
    """The metrics without the lesion-presence prior (the cases it changed scored on their masks as predicted
    before it), the with/without table, and the summary keys (which cases it changed, the means without it)."""
    record = read_prior_record(predictions_dir)
    validation_ids = {case for case, _, _ in pairs}
    changed = sorted(set(record["changed_cases"]) & validation_ids)
    references = {case: reference for case, _, reference in pairs}
    without = scores_without_prior(predictions_dir, changed, references, seg_table, nsd_tolerance_mm, n_workers)
    table, keys = prior_effect(seg_summary, summarize_segmentation(without))
    keys["lesion_prior"] = {
        "enabled": record["enabled"],
        "relative_threshold": record["relative_threshold"],
        "n_changed": len(changed),
        "changed_cases": changed,
    }
    if record["enabled"]:
        log.info(
            "lesion-presence prior changed %d validation case(s): %s; lesion Dice %.4f with, %.4f without",
            len(changed),
            ", ".join(changed) or "none",
            seg_summary["lesion"]["dice"]["mean"],
            keys["lesion_dice_mean_without_prior"],
        )
    return table, keys


def _fmt(value) -> str:
    return "undefined" if value is None else f"{value:.4f}"
