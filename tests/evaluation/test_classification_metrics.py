"""Classification metrics and the summary files, on hand-made data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pancreas_mtl.evaluation.classification import (
    brier_score,
    classification_metrics,
    expected_calibration_error,
)
from pancreas_mtl.evaluation.summary import read_segmentation_per_case, write_metrics
from tests.evaluation.helpers import strict_load


def probs_for(predicted, confidence=0.6):
    """Rows with ``confidence`` on the predicted class and the rest split evenly."""
    p = np.full((len(predicted), 3), (1 - confidence) / 2)
    p[np.arange(len(predicted)), predicted] = confidence
    return p


# -- classification_metrics -----------------------------------------------------------------------------


def test_hand_made_confusion():
    truth = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    pred = [0, 0, 0, 1, 0, 1, 1, 1, 2, 2]
    # confusion (rows truth): [[3,1,0],[1,2,0],[0,1,2]]; column sums 4, 4, 2
    f1_0 = 2 * (3 / 4) * (3 / 4) / (3 / 4 + 3 / 4)  # P 3/4, R 3/4
    f1_1 = 2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3)  # P 2/4, R 2/3 -> 4/7
    f1_2 = 2 * 1 * (2 / 3) / (1 + 2 / 3)  # P 2/2, R 2/3 -> 4/5
    m = classification_metrics(truth, probs_for(pred))
    assert m["confusion_matrix"] == [[3, 1, 0], [1, 2, 0], [0, 1, 2]]
    assert m["macro_f1"] == pytest.approx((f1_0 + f1_1 + f1_2) / 3)
    assert m["macro_f1"] == pytest.approx((0.75 + 4 / 7 + 0.8) / 3)
    assert m["per_class"]["1"] == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    assert m["per_class"]["2"]["precision"] == 1.0 and m["per_class"]["0"]["support"] == 4
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    assert m["accuracy"] == pytest.approx(0.7)
    # Brier: correct rows (0.4^2 + 2*0.2^2) = 0.24, wrong rows (0.6^2 + 0.8^2 + 0.2^2) = 1.04
    assert m["brier_score"] == pytest.approx((7 * 0.24 + 3 * 1.04) / 10)
    # every confidence is 0.6 (one bin): |accuracy 0.7 - confidence 0.6|
    assert m["ece"] == pytest.approx(0.1)
    assert m["n_cases"] == 10
    assert sum(b["count"] for b in m["calibration_bins"]) == 10


def test_perfect_predictions():
    truth = [0, 1, 2, 2, 1, 0]
    m = classification_metrics(truth, np.eye(3)[truth])
    assert m["macro_f1"] == 1.0 and m["balanced_accuracy"] == 1.0 and m["accuracy"] == 1.0
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    assert m["brier_score"] == 0.0 and m["ece"] == 0.0


def test_labels_are_always_0_to_2():
    truth = [0, 0, 1, 1]
    m = classification_metrics(truth, probs_for([0, 1, 1, 1]))
    assert list(m["per_class"]) == ["0", "1", "2"]
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert m["per_class"]["2"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # F1: class 0 (P 1, R 1/2) = 2/3, class 1 (P 2/3, R 1) = 4/5, absent class 2 = 0 (zero_division=0)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 4 / 5 + 0) / 3)
    # balanced accuracy averages the recall of the classes present in the truth
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1) / 2)
    # a predicted class absent from the truth
    m = classification_metrics([0, 0], probs_for([0, 2]))
    assert m["confusion_matrix"] == [[1, 0, 1], [0, 0, 0], [0, 0, 0]]


def test_brier_small_example():
    assert brier_score([0], np.array([[0.5, 0.3, 0.2]])) == pytest.approx(0.25 + 0.09 + 0.04)
    assert brier_score([2, 0], np.array([[1.0, 0, 0], [0, 0, 1.0]])) == pytest.approx(2.0)


def test_ece_small_example():
    truth = [0, 1, 2, 0, 1]
    p = np.array(
        [
            [0.95, 0.03, 0.02],  # conf 0.95, correct   -> bin (0.9, 1]
            [0.90, 0.05, 0.05],  # conf 0.90, wrong     -> bin (0.8, 0.9]
            [0.10, 0.05, 0.85],  # conf 0.85, correct   -> bin (0.8, 0.9]
            [0.30, 0.45, 0.25],  # conf 0.45, wrong     -> bin (0.4, 0.5]
            [0.20, 0.50, 0.30],  # conf 0.50, correct   -> bin (0.4, 0.5]
        ]
    )
    want = (1 / 5) * abs(1 - 0.95) + (2 / 5) * abs(0.5 - 0.875) + (2 / 5) * abs(0.5 - 0.475)
    assert expected_calibration_error(truth, p, n_bins=10) == pytest.approx(want)
    # one bin: |accuracy - mean confidence| over all cases
    assert expected_calibration_error(truth, p, n_bins=1) == pytest.approx(abs(3 / 5 - np.mean(p.max(1))))
    m = classification_metrics(truth, p, n_bins=10)
    assert m["ece"] == pytest.approx(want)
    assert [b["count"] for b in m["calibration_bins"]] == [0, 0, 0, 0, 2, 0, 0, 0, 2, 1]


def test_invalid_inputs():
    with pytest.raises(ValueError, match="shape"):
        classification_metrics([0, 1], np.ones((2, 2)) / 2)
    with pytest.raises(ValueError, match="sum to 1"):
        classification_metrics([0, 1], np.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 3], probs_for([0, 1]))


# -- summary.json ----------------------------------------------------------------------------------------


def test_write_metrics(tmp_path):
    from pancreas_mtl.evaluation.segmentation import summarize_segmentation

    nan = float("nan")
    table = pd.DataFrame(
        [
            {
                "case_id": "a",
                "region": "whole",
                "dice": 0.9,
                "nsd": 0.95,
                "hd95": 2.1,
                "msd": 0.7,
                "reference_voxels": 100,
                "predicted_voxels": 98,
            },
            {
                "case_id": "a",
                "region": "lesion",
                "dice": 0.0,
                "nsd": 0.0,
                "hd95": nan,
                "msd": nan,
                "reference_voxels": 10,
                "predicted_voxels": 0,
            },
        ]
    )
    table.attrs["nsd_tolerance_mm"] = 2.0
    seg_summary = summarize_segmentation(table)
    cls = classification_metrics([0], np.array([[0.8, 0.1, 0.1]]))
    summary = write_metrics(tmp_path / "metrics", table, seg_summary, cls, {"checkpoint": "final", "folds": [0]})
    out = tmp_path / "metrics"
    for name in ("segmentation_per_case.csv", "segmentation_summary.json", "classification.json", "summary.json"):
        assert (out / name).is_file(), name
    written = strict_load(out / "summary.json")
    assert written == summary
    required = [
        "whole_pancreas_dice_mean",
        "lesion_dice_mean",
        "macro_f1",
        "whole_pancreas_dice_std",
        "whole_pancreas_dice_median",
        "lesion_dice_std",
        "lesion_dice_median",
        "whole_pancreas_nsd_mean",
        "lesion_nsd_mean",
        "whole_pancreas_hd95_mean",
        "lesion_hd95_mean",
        "whole_pancreas_msd_mean",
        "lesion_msd_mean",
        "balanced_accuracy",
        "brier_score",
        "ece",
        "n_cases",
        "nsd_tolerance_mm",
    ]
    assert not [k for k in required if k not in written]
    assert written["whole_pancreas_dice_mean"] == pytest.approx(0.9)
    assert written["lesion_hd95_mean"] is None and written["lesion_hd95_n_undefined"] == 1
    assert written["whole_pancreas_dice_std"] is None  # one case: no sample std
    assert written["macro_f1"] == pytest.approx(1 / 3) and written["n_cases"] == 1
    assert written["nsd_tolerance_mm"] == 2.0 and written["checkpoint"] == "final" and written["folds"] == [0]
    seg = strict_load(out / "segmentation_summary.json")
    assert seg["lesion"]["hd95"]["mean"] is None and seg["lesion"]["hd95"]["n_undefined"] == 1
    assert strict_load(out / "classification.json")["confusion_matrix"][0] == [1, 0, 0]
    per_case = read_segmentation_per_case(out / "segmentation_per_case.csv")
    assert len(per_case) == 2 and math.isnan(per_case.loc[1, "hd95"])
    with pytest.raises(ValueError, match="overwrite"):
        write_metrics(tmp_path / "m2", table, seg_summary, cls, {"macro_f1": 0.99})
