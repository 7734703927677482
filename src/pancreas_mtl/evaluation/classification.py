"""Lesion-subtype classification metrics (3 classes: 0, 1, 2) from predicted class probabilities.

The predicted subtype of a case is the argmax of its three probabilities (the first class on a tie).

:func:`classification_metrics` returns

* ``macro_f1`` -- the headline: unweighted mean of the three per-class F1 scores;
* ``per_class`` -- ``{"0": {precision, recall, f1, support}, "1": ..., "2": ...}``;
* ``balanced_accuracy`` (mean per-class recall over the classes present in the truth) and ``accuracy``;
* ``confusion_matrix`` -- 3x3 list of ints, rows = true subtype, columns = predicted subtype;
* ``brier_score`` -- multi-class Brier score, ``mean_i sum_k (p_ik - [y_i == k])**2`` (0 best, 2 worst);
* ``ece`` -- expected calibration error of the top-class confidence ``c_i = max_k p_ik``: cases are put
  in ``n_bins`` equal-width bins over [0, 1] (bin b holds ``b/n_bins < c <= (b+1)/n_bins``; c = 0 goes
  to the first bin), and ``ECE = sum_b (n_b / N) * |accuracy_b - mean confidence_b|``;
* ``calibration_bins`` -- the per-bin table behind the ECE (lower, upper, count, accuracy,
  confidence; NaN for empty bins), for a reliability diagram;
* ``n_cases`` and ``n_bins``.

Precision, recall, F1, balanced accuracy and the confusion matrix come from scikit-learn, always with
``labels=[0, 1, 2]`` (a class absent from truth and predictions still gets its row, with F1 0) and
``zero_division=0``. Metrics Reloaded (Maier-Hein et al., Nat. Methods 2024) recommends reporting a
calibration metric next to the classification metrics when the model outputs probabilities, which is
why the Brier score and ECE are part of the result.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

from pancreas_mtl.errors import UserInputError

CLASSES = (0, 1, 2)
PROBABILITY_COLUMNS = [f"prob_{k}" for k in CLASSES]
PROBABILITIES_CSV_COLUMNS = ["case_id", *PROBABILITY_COLUMNS, "predicted_subtype"]
CASE_TABLE_COLUMNS = ["case_id", "split", "subtype", "image", "mask"]
#: tolerance on a probability row's sum (CSV files hold rounded values)
ROW_SUM_ATOL = 1e-3
#: two probabilities closer than this count as a tie when checking the predicted_subtype column
TIE_ATOL = 1e-6


def _check_probabilities(probabilities: np.ndarray, n: int) -> np.ndarray:
    p = np.asarray(probabilities, dtype=float)
    if p.ndim != 2 or p.shape != (n, len(CLASSES)):
        raise ValueError(f"probabilities must have shape ({n}, {len(CLASSES)}), got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise ValueError("probabilities must be finite and within [0, 1]")
    bad = np.flatnonzero(np.abs(p.sum(axis=1) - 1.0) > ROW_SUM_ATOL)
    if bad.size:
        raise ValueError(f"probability rows {bad[:10].tolist()} do not sum to 1 (tolerance {ROW_SUM_ATOL})")
    return p


def predicted_classes(probabilities: np.ndarray) -> np.ndarray:
    """Argmax of each row (the first class on a tie)."""
    return np.argmax(np.asarray(probabilities, dtype=float), axis=1).astype(int)


def brier_score(truth: Sequence[int], probabilities: np.ndarray) -> float:
    """Multi-class Brier score: mean over cases of sum over classes of (p - one-hot)^2."""
    y = np.asarray(truth, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    onehot = np.eye(len(CLASSES))[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def calibration_bins(truth: Sequence[int], probabilities: np.ndarray, n_bins: int = 10) -> list[dict]:
    """Equal-width bins of the top-class confidence: lower, upper, count, accuracy, confidence."""
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y = np.asarray(truth, dtype=int)
    p = np.asarray(probabilities, dtype=float)
    confidence = p.max(axis=1)
    correct = (predicted_classes(p) == y).astype(float)
    # bin b holds b/n < c <= (b+1)/n; c = 0 goes to bin 0
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        bins.append({
            "lower": b / n_bins,
            "upper": (b + 1) / n_bins,
            "count": count,
            "accuracy": float(correct[members].mean()) if count else float("nan"),
            "confidence": float(confidence[members].mean()) if count else float("nan"),
        })
    return bins


def expected_calibration_error(truth: Sequence[int], probabilities: np.ndarray, n_bins: int = 10) -> float:
    """ECE of the top-class confidence over ``n_bins`` equal-width bins."""
    bins = calibration_bins(truth, probabilities, n_bins)
    n = sum(b["count"] for b in bins)
    if n == 0:
        return float("nan")
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))


def classification_metrics(truth: Sequence[int], probabilities: np.ndarray, n_bins: int = 10) -> dict:
    """Macro-F1 (headline), per-class precision/recall/F1/support, balanced accuracy, accuracy,
    confusion matrix, Brier score and ECE; see the module docstring for the definitions."""
    y = np.asarray(truth)
    if y.ndim != 1 or y.size == 0:
        raise ValueError("truth must be a non-empty 1D sequence of subtypes")
    if not np.all(np.isin(y, CLASSES)):
        raise ValueError(f"truth holds values outside {list(CLASSES)}: {sorted(set(y.tolist()) - set(CLASSES))}")
    y = y.astype(int)
    p = _check_probabilities(probabilities, y.size)
    pred = predicted_classes(p)
    labels = list(CLASSES)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, average=None, zero_division=0)
    macro_f1 = precision_recall_fscore_support(
        y, pred, labels=labels, average="macro", zero_division=0)[2]
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true" when a predicted class is absent from the truth
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y, pred)
    return {
        "macro_f1": float(macro_f1),
        "per_class": {
            str(k): {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                     "support": int(support[i])}
            for i, k in enumerate(labels)
        },
        "balanced_accuracy": float(balanced),
        "accuracy": float(accuracy_score(y, pred)),
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).astype(int).tolist(),
        "brier_score": brier_score(y, p),
        "ece": expected_calibration_error(y, p, n_bins),
        "calibration_bins": calibration_bins(y, p, n_bins),
        "n_bins": int(n_bins),
        "n_cases": int(y.size),
    }


# -- files ------------------------------------------------------------------------------------------

def read_probabilities_csv(path: str | Path) -> pd.DataFrame:
    """``case_id,prob_0,prob_1,prob_2,predicted_subtype``, checked.

    Fails (UserInputError naming the file) on missing columns, duplicate case ids, probabilities that
    are not numbers in [0, 1] or whose rows do not sum to 1, and a ``predicted_subtype`` that is not
    the argmax of its row (ties within 1e-6 excepted). ``predicted_subtype`` in the result is the argmax.
    """
    path = Path(path)
    df = _read_table(path, "class probabilities file", "CSV", PROBABILITIES_CSV_COLUMNS, dtype={"case_id": str})
    problems = []
    dup = sorted(df.loc[df["case_id"].duplicated(), "case_id"].unique().tolist())
    if dup:
        problems.append(f"duplicate case_id(s): {', '.join(dup[:10])}")
    probs = df[PROBABILITY_COLUMNS].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad_value = ~np.all(np.isfinite(probs) & (probs >= 0) & (probs <= 1), axis=1)
    bad_sum = ~bad_value & (np.abs(np.nan_to_num(probs).sum(axis=1) - 1.0) > ROW_SUM_ATOL)
    for i in np.flatnonzero(bad_value)[:10]:
        problems.append(f"{df['case_id'].iloc[i]}: probabilities are not numbers in [0, 1]")
    for i in np.flatnonzero(bad_sum)[:10]:
        problems.append(f"{df['case_id'].iloc[i]}: probabilities sum to {probs[i].sum():.6g}, not 1")
    if not problems:
        argmax = predicted_classes(probs)
        stated = pd.to_numeric(df["predicted_subtype"], errors="coerce").to_numpy(dtype=float)
        for i in range(len(df)):
            s = stated[i]
            ok = np.isfinite(s) and s in CLASSES and (
                int(s) == argmax[i] or probs[i, int(s)] >= probs[i].max() - TIE_ATOL)
            if not ok:
                problems.append(f"{df['case_id'].iloc[i]}: predicted_subtype {df['predicted_subtype'].iloc[i]!r} "
                                f"is not the argmax ({argmax[i]}) of its probabilities")
    if problems:
        raise UserInputError(f"{path}: invalid class probabilities", problems)
    out = df[["case_id"]].copy()
    for k, col in enumerate(PROBABILITY_COLUMNS):
        out[col] = probs[:, k]
    out["predicted_subtype"] = predicted_classes(probs)
    return out.reset_index(drop=True)


def read_case_table(path: str | Path) -> pd.DataFrame:
    """The case table ``case_id,split,subtype,image,mask``; ``subtype`` as nullable Int64 (empty for test)."""
    return _read_table(Path(path), "case table", "a case table", CASE_TABLE_COLUMNS,
                       dtype={"case_id": str, "split": str, "subtype": "Int64", "image": str, "mask": str},
                       keep_default_na=False, na_values={"subtype": [""]})


def _read_table(path: Path, what: str, read_as: str, columns, **read_csv_kwargs) -> pd.DataFrame:
    """Read a CSV with the given columns; a missing file, unreadable CSV or missing column is a UserInputError."""
    if not path.is_file():
        raise UserInputError(f"{what} not found: {path}")
    try:
        df = pd.read_csv(path, **read_csv_kwargs)
    except Exception as err:
        raise UserInputError(f"{path}: cannot be read as {read_as} ({type(err).__name__}: {err})") from err
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserInputError(f"{path}: missing column(s) {', '.join(missing)} (expected {','.join(columns)})")
    return df
