"""The report's figures from result files (pancreas_mtl.report.figures): the choice of the overlay cases,
the benchmark files, and the thin Snakemake script run through ``runpy`` with a stand-in ``snakemake``."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pancreas_mtl.data.case_table import read_case_table
from pancreas_mtl.errors import UserInputError
from pancreas_mtl.report.figures import (
    overlay_cases,
    plot_benchmark_files,
    read_benchmark_results,
    with_subtypes,
)
from tests.report.helpers import (
    BENCHMARK,
    assert_png,
    benchmark_per_case,
    nnunet_logging,
    synthetic_case,
    write_checkpoint,
    write_nifti,
)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "workflow" / "scripts" / "make_report_plots.py"
FIGURES = ["training_curves", "confusion_matrix", "dice_distribution", "overlay_montage", "benchmark"]
PER_CASE_METRICS = {"nsd": 0.5, "hd95": 3.0, "msd": 1.0, "reference_voxels": 100, "predicted_voxels": 90}


def validation_results(tmp_path, n_cases: int = 5) -> SimpleNamespace:
    """Raw dataset, predictions, case table and per-case table of ``n_cases`` validation cases; whole-pancreas
    Dice 0.9, 0.8, ... in case order."""
    raw, predictions = tmp_path / "raw", tmp_path / "predictions"
    case_rows, per_case_rows = [], []
    for i in range(n_cases):
        case_id = f"quiz_{i % 3}_{i:03d}"
        image, labels = synthetic_case(shape=(48, 48, 8), seed=i, lesion_slice=4)
        write_nifti(raw / "imagesTr" / f"{case_id}_0000.nii.gz", image)
        write_nifti(raw / "labelsTr" / f"{case_id}.nii.gz", labels)
        write_nifti(predictions / f"{case_id}.nii.gz", np.roll(labels, i, axis=1))
        case_rows.append(
            {
                "case_id": case_id,
                "split": "validation",
                "subtype": i % 3,
                "image": f"imagesTr/{case_id}_0000.nii.gz",
                "mask": f"labelsTr/{case_id}.nii.gz",
            }
        )
        for region, dice in (("whole", 0.9 - 0.1 * i), ("lesion", 0.7 - 0.1 * i)):
            per_case_rows.append({"case_id": case_id, "region": region, "dice": dice, **PER_CASE_METRICS, "nsd": dice})
    pd.DataFrame(case_rows).to_csv(tmp_path / "cases.csv", index=False)
    pd.DataFrame(per_case_rows).to_csv(tmp_path / "per_case.csv", index=False)
    return SimpleNamespace(
        raw=raw, predictions=predictions, case_table=tmp_path / "cases.csv", per_case=tmp_path / "per_case.csv"
    )


# ------------------------------------------------------------------------------------------ overlay cases
def test_overlay_cases_are_the_two_best_then_the_two_worst(tmp_path):
    res = validation_results(tmp_path)
    cases = overlay_cases(pd.read_csv(res.per_case), read_case_table(res.case_table), res.raw, res.predictions)
    assert [(c["case_id"], c["label"]) for c in cases] == [
        ("quiz_0_000", "best"),
        ("quiz_1_001", "best"),
        ("quiz_0_003", "worst"),
        ("quiz_1_004", "worst"),
    ]
    assert cases[0]["dice"] == pytest.approx(0.9)
    assert cases[2]["image"] == res.raw / "imagesTr" / "quiz_0_003_0000.nii.gz"
    assert cases[2]["reference"] == res.raw / "labelsTr" / "quiz_0_003.nii.gz"
    assert cases[2]["prediction"] == res.predictions / "quiz_0_003.nii.gz"


def test_overlay_cases_show_each_case_once_and_skip_cases_without_prediction(tmp_path):
    res = validation_results(tmp_path, n_cases=4)
    (res.predictions / "quiz_0_000.nii.gz").unlink()  # the best case has no prediction: not shown
    cases = overlay_cases(pd.read_csv(res.per_case), read_case_table(res.case_table), res.raw, res.predictions)
    assert [(c["case_id"], c["label"]) for c in cases] == [
        ("quiz_1_001", "best"),
        ("quiz_2_002", "best"),
        ("quiz_0_003", "worst"),
    ]


def test_overlay_cases_need_a_prediction_and_a_case_table_row(tmp_path):
    res = validation_results(tmp_path, n_cases=2)
    per_case, table = pd.read_csv(res.per_case), read_case_table(res.case_table)
    with pytest.raises(UserInputError, match="no validation case has both a whole-pancreas Dice and a prediction"):
        overlay_cases(per_case, table, res.raw, tmp_path / "none")
    with pytest.raises(UserInputError, match="quiz_1_001 of the per-case table is not in the case table"):
        overlay_cases(per_case, table[table["case_id"] != "quiz_1_001"], res.raw, res.predictions)


def test_per_case_rows_get_the_true_subtype(tmp_path):
    res = validation_results(tmp_path, n_cases=3)
    merged = with_subtypes(pd.read_csv(res.per_case), read_case_table(res.case_table))
    assert merged.loc[merged["region"] == "whole", "subtype"].tolist() == [0, 1, 2]


# ------------------------------------------------------------------------------------------ benchmark files
def test_benchmark_chart_from_files_with_and_without_per_case_timings(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(BENCHMARK))
    benchmark_per_case(3).to_csv(tmp_path / "per_case.csv", index=False)
    assert_png(plot_benchmark_files(tmp_path / "summary.json", tmp_path / "per_case.csv", tmp_path / "b.png"))
    (tmp_path / "empty.csv").write_text("")
    summary, per_case = read_benchmark_results(tmp_path / "summary.json", tmp_path / "empty.csv")
    assert summary == BENCHMARK and per_case is None
    assert_png(plot_benchmark_files(tmp_path / "summary.json", tmp_path / "empty.csv", tmp_path / "b2.png"))


# ------------------------------------------------------------------------------------------ Snakemake script
def test_make_report_plots_script(tmp_path):
    res = validation_results(tmp_path)
    (tmp_path / "classification.json").write_text(
        json.dumps({"confusion_matrix": [[2, 0, 0], [0, 1, 1], [0, 0, 1]], "macro_f1": 0.78})
    )
    (tmp_path / "benchmark.json").write_text(json.dumps(BENCHMARK))
    benchmark_per_case(5).to_csv(tmp_path / "benchmark_per_case.csv", index=False)

    snakemake = SimpleNamespace(
        input=SimpleNamespace(
            stage1_checkpoint=str(write_checkpoint(tmp_path / "s1.pth", nnunet_logging(10, False))),
            stage2_checkpoint=str(write_checkpoint(tmp_path / "s2.pth", nnunet_logging(10, True))),
            segmentation_per_case=str(res.per_case),
            classification=str(tmp_path / "classification.json"),
            case_table=str(res.case_table),
            raw_dataset=str(res.raw),
            predictions=str(res.predictions),
            benchmark=str(tmp_path / "benchmark.json"),
            benchmark_per_case=str(tmp_path / "benchmark_per_case.csv"),
        ),
        output=SimpleNamespace(**{n: str(tmp_path / "report" / f"{n}.png") for n in FIGURES}),
        log=[str(tmp_path / "logs" / "make_report_plots.log")],
    )
    runpy.run_path(str(SCRIPT), init_globals={"snakemake": snakemake}, run_name="__main__")
    for name in FIGURES:
        assert_png(tmp_path / "report" / f"{name}.png")
    log_text = Path(snakemake.log[0]).read_text()
    # best two (quiz_0_000, quiz_1_001) and worst two (quiz_0_003, quiz_1_004) by whole Dice
    assert "quiz_0_000 best, quiz_1_001 best, quiz_0_003 worst, quiz_1_004 worst" in log_text


def test_make_report_plots_script_draws_the_segmentation_figures_of_a_stage1_model(tmp_path):
    """A segmentation-only run: stage 1's checkpoint, no stage 2, classification or benchmark."""
    res = validation_results(tmp_path)
    segmentation_figures = ("training_curves", "dice_distribution", "overlay_montage")
    snakemake = SimpleNamespace(
        input=SimpleNamespace(
            stage1_checkpoint=str(write_checkpoint(tmp_path / "s1.pth", nnunet_logging(10, False))),
            segmentation_per_case=str(res.per_case),
            case_table=str(res.case_table),
            raw_dataset=str(res.raw),
            predictions=str(res.predictions),
        ),
        output=SimpleNamespace(**{n: str(tmp_path / "report" / f"{n}.png") for n in segmentation_figures}),
        log=[str(tmp_path / "logs" / "make_report_plots.log")],
    )
    runpy.run_path(str(SCRIPT), init_globals={"snakemake": snakemake}, run_name="__main__")
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(f"{n}.png" for n in segmentation_figures)
    for name in segmentation_figures:
        assert_png(tmp_path / "report" / f"{name}.png")


def test_make_report_plots_script_fails_cleanly_without_predictions(tmp_path):
    pd.DataFrame([{"case_id": "quiz_0_001", "region": "whole", "dice": 0.5, **PER_CASE_METRICS}]).to_csv(
        tmp_path / "pc.csv", index=False
    )
    pd.DataFrame([{"case_id": "quiz_0_001", "split": "validation", "subtype": 0, "image": "a", "mask": "b"}]).to_csv(
        tmp_path / "cases.csv", index=False
    )
    (tmp_path / "classification.json").write_text(json.dumps({"confusion_matrix": [[1, 0], [0, 1]]}))
    snakemake = SimpleNamespace(
        input=SimpleNamespace(
            stage1_checkpoint=str(write_checkpoint(tmp_path / "s1.pth", nnunet_logging(3, False))),
            stage2_checkpoint=str(write_checkpoint(tmp_path / "s2.pth", nnunet_logging(3, True))),
            segmentation_per_case=str(tmp_path / "pc.csv"),
            classification=str(tmp_path / "classification.json"),
            case_table=str(tmp_path / "cases.csv"),
            raw_dataset=str(tmp_path),
            predictions=str(tmp_path / "none"),
            benchmark=str(tmp_path / "b.json"),
            benchmark_per_case=str(tmp_path / "b.csv"),
        ),
        output=SimpleNamespace(**{n: str(tmp_path / f"{n}.png") for n in FIGURES}),
        log=[str(tmp_path / "plots.log")],
    )
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(SCRIPT), init_globals={"snakemake": snakemake}, run_name="__main__")
    assert exit_info.value.code == 1
    text = (tmp_path / "plots.log").read_text()
    assert "no validation case has both a whole-pancreas Dice and a prediction" in text
    assert "Traceback" not in text
