"""Writes the evaluation results into one folder (``results/metrics/`` in the workflow).

:func:`write_metrics` writes

* ``segmentation_per_case.csv`` -- the long table (case_id, region, dice, nsd, hd95, msd,
  reference_voxels, predicted_voxels); undefined values are empty cells;
* ``segmentation_summary.json`` -- ``{region: {metric: {mean, std, median, n, n_undefined}}}``;
* ``classification.json`` -- :func:`~pancreas_mtl.evaluation.classification.classification_metrics`;
* ``lesion_prior_effect.csv`` -- (:func:`write_prior_effect`) region, metric, mean with and without the
  lesion-presence prior and their difference, beside the ``{prefix}_{metric}_mean_without_prior`` keys of
  ``summary.json``;
* ``summary.json`` -- a flat dict of the headline numbers (written last), merged with ``extra``.

``summary.json`` keys: ``{prefix}_{metric}_{stat}`` for prefix ``whole_pancreas`` (region "whole") and
``lesion``, metric dice/nsd/hd95/msd and stat mean/std/median/n_undefined (e.g. ``lesion_dice_mean``,
``whole_pancreas_hd95_n_undefined``); ``macro_f1``, ``balanced_accuracy``, ``accuracy``,
``brier_score``, ``ece``, ``n_cases`` (classified validation cases; these six only with a classification head),
``n_segmentation_cases`` and ``nsd_tolerance_mm``. NaN and infinities are written as JSON ``null`` everywhere.
:func:`read_segmentation_per_case` reads ``segmentation_per_case.csv`` back (the report does).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pancreas_mtl.data.tables import read_checked_csv
from pancreas_mtl.evaluation.segmentation import METRICS, TABLE_COLUMNS

SEGMENTATION_PER_CASE_FILE = "segmentation_per_case.csv"
SEGMENTATION_SUMMARY_FILE = "segmentation_summary.json"
CLASSIFICATION_FILE = "classification.json"
SUMMARY_FILE = "summary.json"
PRIOR_EFFECT_FILE = "lesion_prior_effect.csv"
PRIOR_EFFECT_METRICS = ("dice", "nsd")
REGION_PREFIX = {"whole": "whole_pancreas", "lesion": "lesion"}
SUMMARY_STATS = ("mean", "std", "median", "n_undefined")
CLASSIFICATION_KEYS = ("macro_f1", "balanced_accuracy", "accuracy", "brier_score", "ece")


def json_safe(obj):
    """A copy of ``obj`` with numpy scalars/arrays made plain Python and NaN/inf made ``None``."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if obj is None or obj is pd.NA or obj is pd.NaT:
        return None
    return obj


def write_json(path: Path, obj) -> None:
    """Strict JSON (no NaN), written to a temporary file and renamed into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def flat_summary(
    seg_summary: dict, cls: dict | None, n_segmentation_cases: int | None = None, nsd_tolerance_mm: float | None = None
) -> dict:
    """The flat headline dict of ``summary.json`` (before ``extra`` is merged); without ``cls`` (a segmentation
    model) it has no classification keys."""
    out: dict = {}
    for region, prefix in REGION_PREFIX.items():
        metrics = seg_summary.get(region, {})
        for metric in METRICS:
            stats = metrics.get(metric, {})
            for stat in SUMMARY_STATS:
                out[f"{prefix}_{metric}_{stat}"] = stats.get(stat, float("nan"))
    if cls is not None:
        for key in CLASSIFICATION_KEYS:
            out[key] = cls.get(key, float("nan"))
        out["n_cases"] = cls.get("n_cases")
    out["n_segmentation_cases"] = n_segmentation_cases
    out["nsd_tolerance_mm"] = nsd_tolerance_mm
    return out


def write_metrics(
    out_dir: Path,
    seg_table: pd.DataFrame,
    seg_summary: dict,
    cls: dict | None,
    extra: dict | None = None,
    *,
    nsd_tolerance_mm: float | None = None,
) -> dict:
    """Write the four result files into ``out_dir`` and return the (JSON-safe) summary; without ``cls`` (a
    segmentation model) there is no ``classification.json`` and the summary has no classification keys.

    ``nsd_tolerance_mm`` defaults to the value :func:`evaluate_segmentation` kept in
    ``seg_table.attrs``. ``extra`` (e.g. checkpoint, folds) is merged into the summary; a key of
    ``extra`` that would change a computed value is an error.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if nsd_tolerance_mm is None:
        nsd_tolerance_mm = seg_table.attrs.get("nsd_tolerance_mm")
    n_seg = int(seg_table["case_id"].nunique()) if "case_id" in seg_table.columns else None
    summary = json_safe(flat_summary(seg_summary, cls, n_seg, nsd_tolerance_mm))
    for key, value in json_safe(dict(extra or {})).items():
        if key in summary and summary[key] is not None and summary[key] != value:
            raise ValueError(f"extra[{key!r}] = {value!r} would overwrite the computed {summary[key]!r}")
        if key not in summary or summary[key] is None:
            summary[key] = value

    csv_path = out_dir / SEGMENTATION_PER_CASE_FILE
    tmp = csv_path.with_name(f".{csv_path.name}.partial")
    seg_table.to_csv(tmp, index=False, na_rep="")
    os.replace(tmp, csv_path)
    write_json(out_dir / SEGMENTATION_SUMMARY_FILE, seg_summary)
    if cls is not None:
        write_json(out_dir / CLASSIFICATION_FILE, cls)
    write_json(out_dir / SUMMARY_FILE, summary)
    return summary


def prior_effect(with_prior: dict, without_prior: dict) -> tuple[pd.DataFrame, dict]:
    """The mean Dice and NSD of each region with and without the lesion-presence prior: a table, and the
    ``{prefix}_{metric}_mean_without_prior`` keys for ``summary.json``."""
    rows, keys = [], {}
    for region, prefix in REGION_PREFIX.items():
        for metric in PRIOR_EFFECT_METRICS:
            with_value = with_prior.get(region, {}).get(metric, {}).get("mean", float("nan"))
            without_value = without_prior.get(region, {}).get(metric, {}).get("mean", float("nan"))
            rows.append(
                {
                    "region": region,
                    "metric": metric,
                    "with_prior": with_value,
                    "without_prior": without_value,
                    "change": with_value - without_value,
                }
            )
            keys[f"{prefix}_{metric}_mean_without_prior"] = without_value
    return pd.DataFrame(rows), keys


def write_prior_effect(out_dir: Path, table: pd.DataFrame) -> Path:
    path = Path(out_dir) / PRIOR_EFFECT_FILE
    tmp = path.with_name(f".{path.name}.partial")
    table.to_csv(tmp, index=False, na_rep="", float_format="%.4f")
    os.replace(tmp, path)
    return path


def read_segmentation_per_case(path: str | Path) -> pd.DataFrame:
    """``segmentation_per_case.csv`` as :func:`write_metrics` writes it, checked; undefined values are NaN."""
    return read_checked_csv(
        path,
        "per-case segmentation table",
        "a per-case segmentation table",
        TABLE_COLUMNS,
        dtype={"case_id": str, "region": str},
    )
