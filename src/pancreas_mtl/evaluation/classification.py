"""Lesion-subtype classification metrics (3 classes: 0, 1, 2) from predicted class probabilities.

The predicted subtype of a case is the argmax of its three probabilities (the first class on a tie).
The subtypes come from :mod:`pancreas_mtl.data.labels`; the ``class_probabilities.csv`` file is read
and checked by :mod:`pancreas_mtl.data.class_probabilities`.

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
from typing import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

from pancreas_mtl.data.class_probabilities import ROW_SUM_ATOL
from pancreas_mtl.data.labels import NUM_SUBTYPES, SUBTYPES


def _check_probabilities(probabilities: np.ndarray, n: int) -> np.ndarray:
    p = np.asarray(probabilities, dtype=float)
    if p.ndim != 2 or p.shape != (n, NUM_SUBTYPES):
        raise ValueError(f"probabilities must have shape ({n}, {NUM_SUBTYPES}), got {p.shape}")
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
    onehot = np.eye(NUM_SUBTYPES)[y]
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
        bins.append(
            {
                "lower": b / n_bins,
                "upper": (b + 1) / n_bins,
                "count": count,
                "accuracy": float(correct[members].mean()) if count else float("nan"),
                "confidence": float(confidence[members].mean()) if count else float("nan"),
            }
        )
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
    if not np.all(np.isin(y, SUBTYPES)):
        raise ValueError(f"truth holds values outside {list(SUBTYPES)}: {sorted(set(y.tolist()) - set(SUBTYPES))}")
    y = y.astype(int)
    p = _check_probabilities(probabilities, y.size)
    pred = predicted_classes(p)
    labels = list(SUBTYPES)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, average=None, zero_division=0
    )
    macro_f1 = precision_recall_fscore_support(y, pred, labels=labels, average="macro", zero_division=0)[2]
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true" when a predicted class is absent from the truth
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y, pred)
    return {
        "macro_f1": float(macro_f1),
        "per_class": {
            str(k): {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
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
