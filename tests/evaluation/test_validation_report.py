"""evaluate_validation_predictions (what the evaluate_validation rule runs) and its thin Snakemake script,
on a hand-made raw dataset, case table and prediction folder."""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pancreas_mtl.errors import UserInputError
from pancreas_mtl.evaluation.validation_report import evaluate_validation_predictions
from tests.evaluation.helpers import lps_affine, strict_load, write_labels

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "workflow" / "scripts" / "evaluate_predictions.py"


def _fixture(tmp_path) -> SimpleNamespace:
    """Three validation cases (the subtype-2 lesion missed and misclassified), one train case, one test prediction."""
    affine = lps_affine((0.7, 0.7, 3.0), origin=(120.0, 80.0, -400.0))
    raw, preds = tmp_path / "raw" / "Dataset501_PancreasQuiz", tmp_path / "predictions"
    shape = (20, 20, 8)
    rows = ["case_id,split,subtype,image,mask"]
    probs = ["case_id,prob_0,prob_1,prob_2,predicted_subtype"]
    for subtype, split in [(0, "validation"), (1, "validation"), (2, "validation"), (0, "train")]:
        case_id = f"quiz_{subtype}_{10 + subtype + (5 if split == 'train' else 0):03d}"
        ref = np.zeros(shape, np.uint8)
        ref[4:14, 4:14, 2:6] = 1
        ref[6:9, 6:9, 3:5] = 2
        write_labels(raw / "labelsTr" / f"{case_id}.nii.gz", ref, affine)
        rows.append(f"{case_id},{split},{subtype},imagesTr/{case_id}_0000.nii.gz,labelsTr/{case_id}.nii.gz")
        if split == "validation":
            pred = ref.copy()
            if subtype == 2:
                pred[pred == 2] = 1  # lesion missed -> lesion Dice 0, HD95/MSD undefined
            write_labels(preds / f"{case_id}.nii.gz", pred, affine)
            predicted = {0: 0, 1: 1, 2: 1}[subtype]
            p = [0.1, 0.1, 0.1]
            p[predicted] = 0.8
            probs.append(f"{case_id},{p[0]},{p[1]},{p[2]},{predicted}")
    rows.append("quiz_099,test,,imagesTs/quiz_099_0000.nii.gz,")
    write_labels(preds / "quiz_099.nii.gz", np.zeros(shape), affine)  # a test-case prediction is ignored
    (tmp_path / "case_table.csv").write_text("\n".join(rows) + "\n")
    (preds / "class_probabilities.csv").write_text("\n".join(probs) + "\n")
    (tmp_path / "splits_final.json").write_text('[{"train": ["quiz_0_015"], "val": []}]')
    return SimpleNamespace(
        input=SimpleNamespace(
            predictions=str(preds),
            case_table=str(tmp_path / "case_table.csv"),
            raw_dataset=str(raw),
            splits=str(tmp_path / "splits_final.json"),
        ),
        output=SimpleNamespace(summary=str(tmp_path / "results" / "metrics" / "summary.json")),
        params=SimpleNamespace(
            nsd_tolerance_mm=2.0,
            extra={"checkpoint": "checkpoint_final.pth", "folds": [0]},
            folds=[0],
            classification=True,
        ),
        log=[str(tmp_path / "logs" / "evaluate.log")],
        threads=1,
    )


def _evaluate(smk: SimpleNamespace, **kwargs) -> dict:
    kwargs.setdefault("nsd_tolerance_mm", smk.params.nsd_tolerance_mm)
    return evaluate_validation_predictions(
        smk.input.predictions, smk.input.case_table, smk.input.raw_dataset, smk.output.summary, **kwargs
    )


def test_a_segmentation_model_gets_segmentation_metrics_alone(tmp_path):
    """A stage-1 model's predictions: no class probabilities to read, cases without a subtype, no classification
    file or keys; the segmentation figures are those of the same masks scored with classification."""
    smk = _fixture(tmp_path)
    with_classification = _evaluate(smk)
    Path(smk.input.predictions, "class_probabilities.csv").unlink()
    table = Path(smk.input.case_table)
    table.write_text(table.read_text().replace(",validation,2,", ",validation,,"))
    metrics = Path(smk.output.summary).parent
    (metrics / "classification.json").unlink()
    summary = _evaluate(smk, classification=False)
    assert not (metrics / "classification.json").exists()
    assert not {"macro_f1", "n_cases", "balanced_accuracy"} & set(summary)
    segmentation = {k: v for k, v in with_classification.items() if k.startswith(("whole_pancreas_", "lesion_"))}
    assert segmentation and all(summary[k] == v for k, v in segmentation.items())
    with pytest.raises(UserInputError, match="quiz_2_012: no subtype"):
        _evaluate(smk)


def test_writes_metrics(tmp_path):
    smk = _fixture(tmp_path)
    returned = _evaluate(smk, nsd_tolerance_mm=2.0, extra=smk.params.extra)
    out = Path(smk.output.summary).parent
    summary = strict_load(smk.output.summary)
    assert returned == summary
    assert summary["whole_pancreas_dice_mean"] == 1.0
    assert summary["lesion_dice_mean"] == pytest.approx(2 / 3)
    assert summary["lesion_hd95_n_undefined"] == 1 and summary["lesion_hd95_mean"] == 0.0
    assert summary["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert summary["n_cases"] == 3 and summary["n_segmentation_cases"] == 3
    assert summary["checkpoint"] == "checkpoint_final.pth" and summary["nsd_tolerance_mm"] == 2.0
    per_case = pd.read_csv(out / "segmentation_per_case.csv")
    assert sorted(per_case["case_id"].unique()) == ["quiz_0_010", "quiz_1_011", "quiz_2_012"]
    cls = strict_load(out / "classification.json")
    assert cls["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]
    assert [c["case_id"] for c in cls["per_case"]] == ["quiz_0_010", "quiz_1_011", "quiz_2_012"]
    assert cls["per_case"][2] == {
        "case_id": "quiz_2_012",
        "subtype": 2,
        "predicted_subtype": 1,
        "prob_0": 0.1,
        "prob_1": 0.8,
        "prob_2": 0.1,
    }


def test_a_summary_not_named_summary_json_is_written_too(tmp_path):
    smk = _fixture(tmp_path)
    smk.output.summary = str(tmp_path / "results" / "metrics" / "headline.json")
    summary = _evaluate(smk)
    assert strict_load(smk.output.summary) == summary == strict_load(tmp_path / "results" / "metrics" / "summary.json")


def test_missing_class_probabilities_are_named(tmp_path):
    smk = _fixture(tmp_path)
    path = Path(smk.input.predictions) / "class_probabilities.csv"
    path.write_text("\n".join(line for line in path.read_text().splitlines() if not line.startswith("quiz_1_011")))
    with pytest.raises(UserInputError, match=r"no class probabilities for 1 validation case\(s\): quiz_1_011"):
        _evaluate(smk)


def test_incomplete_validation_rows_are_listed(tmp_path):
    smk = _fixture(tmp_path)
    table = Path(smk.input.case_table)
    table.write_text(table.read_text().replace("quiz_1_011,validation,1,", "quiz_1_011,validation,,"))
    with pytest.raises(UserInputError) as err:
        _evaluate(smk)
    assert "incomplete validation rows" in err.value.summary and "quiz_1_011: no subtype" in err.value.problems


def test_script_writes_metrics(tmp_path):
    smk = _fixture(tmp_path)
    runpy.run_path(str(SCRIPT), init_globals={"snakemake": smk}, run_name="__main__")
    summary = strict_load(smk.output.summary)
    assert summary["lesion_dice_mean"] == pytest.approx(2 / 3)
    assert summary["checkpoint"] == "checkpoint_final.pth" and summary["nsd_tolerance_mm"] == 2.0
    assert summary["checkpoint_selection_cases"] == {"0": []}
    assert "ignoring 1 prediction(s) of non-validation cases: quiz_099.nii.gz" in Path(smk.log[0]).read_text()


def test_script_fails_with_clear_message_on_missing_prediction(tmp_path):
    smk = _fixture(tmp_path)
    (Path(smk.input.predictions) / "quiz_1_011.nii.gz").unlink()
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(SCRIPT), init_globals={"snakemake": smk}, run_name="__main__")
    assert exc.value.code == 1
    log_text = Path(smk.log[0]).read_text()
    assert "quiz_1_011" in log_text and "Traceback" not in log_text
    assert not Path(smk.output.summary).exists()


def test_metrics_with_and_without_the_lesion_prior_side_by_side(tmp_path):
    """The case the prior changed is scored on its mask from before the prior for the 'without' column."""
    from pancreas_mtl.data.lesion_prior_record import WITHOUT_PRIOR_FOLDER, write_prior_record

    smk = _fixture(tmp_path)
    preds, case = Path(smk.input.predictions), "quiz_2_012"  # its lesion was missed
    before = preds / WITHOUT_PRIOR_FOLDER / f"{case}.nii.gz"
    before.parent.mkdir()
    (preds / f"{case}.nii.gz").rename(before)
    labels = nib.load(before)
    after = np.asarray(labels.dataobj).copy()
    after[6:9, 6:9, 3:5] = 2  # the prior found the whole lesion
    write_labels(preds / f"{case}.nii.gz", after, labels.affine)
    write_prior_record(preds, 0.5, {case: {"added_voxels": 18, "peak_probability": 0.4}})

    summary = _evaluate(smk)
    assert summary["lesion_dice_mean"] == pytest.approx(1.0)
    assert summary["lesion_dice_mean_without_prior"] == pytest.approx(2 / 3)
    assert summary["lesion_prior"] == {
        "enabled": True,
        "relative_threshold": 0.5,
        "n_changed": 1,
        "changed_cases": [case],
    }
    effect = pd.read_csv(Path(smk.output.summary).parent / "lesion_prior_effect.csv")
    lesion = effect[(effect["region"] == "lesion") & (effect["metric"] == "dice")].iloc[0]
    assert lesion["with_prior"] == pytest.approx(1.0) and lesion["without_prior"] == pytest.approx(2 / 3, abs=1e-4)
    whole = effect[(effect["region"] == "whole") & (effect["metric"] == "dice")].iloc[0]
    assert whole["change"] == 0  # the prior relabels inside the pancreas here: the whole region is unchanged
