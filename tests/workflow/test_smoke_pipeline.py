"""Assertions on the whole workflow run by real Snakemake on the smoke configuration."""

import json
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pancreas_mtl.benchmarks.inference import ROWS, STEPS
from tests.workflow_helpers import run_snakemake, snakemake_output

pytestmark = pytest.mark.slow

DATASET = "Dataset501_PancreasQuiz"
PLANS = "nnUNetResEncUNetMPlans"


def smoke_config(workdir):
    return yaml.safe_load((workdir / ".test" / "config_smoke.yaml").read_text())


def fold_folder(workdir, trainer, fold=0, root="trained"):
    """A model's published fold folder (root "trained"), or the work folder it trained in (root "training")."""
    return workdir / "results" / "nnunet" / root / DATASET / f"{trainer}__{PLANS}__3d_cpu_demo" / f"fold_{fold}"


def test_every_rule_wrote_its_log_and_benchmark(smoke_workflow):
    jobs = [
        "make_synthetic_quiz",
        f"convert_quiz_to_nnunet_{DATASET}",
        f"convert_test_images_{DATASET}",
        f"plan_and_preprocess_{DATASET}",
        "model_folder_metadata_nnUNetTrainerPancreasMultiTask__nnUNetResEncUNetMPlans__3d_cpu_demo",
        "predict_validation",
        "predict_test",
        "subtype_results",
        "submission_zip",
        "evaluate_validation",
        "benchmark_inference",
        "report_plots",
    ]
    jobs += [f"train_{stage}_fold{fold}" for stage in ("stage1", "stage2") for fold in (0, 1)]
    jobs += [
        f"final_validation_{trainer}__{PLANS}__3d_cpu_demo_fold{fold}"
        for trainer in ("nnUNetTrainerPancreasSeg", "nnUNetTrainerPancreasMultiTask")
        for fold in (0, 1)
    ]
    for job in jobs:
        assert (smoke_workflow / "logs" / f"{job}.log").stat().st_size > 0, job
        assert (smoke_workflow / "benchmarks" / f"{job}.tsv").is_file(), job


def test_kfold_conversion_holds_out_the_official_validation_and_rounds_labels(smoke_workflow):
    raw = smoke_workflow / "results" / "nnunet" / "raw" / DATASET
    splits = json.loads((smoke_workflow / "results" / "dataset" / DATASET / "splits_final.json").read_text())
    assert len(splits) == 2
    quiz = smoke_workflow / "resources" / "synthetic_quiz"
    official_val = {p.name[: -len(".nii.gz")] for p in quiz.glob("validation/subtype*/quiz_?_???.nii.gz")}
    official_train = {p.name[: -len(".nii.gz")] for p in quiz.glob("train/subtype*/quiz_?_???.nii.gz")}
    for fold in splits:
        assert set(fold["train"]) | set(fold["val"]) == official_train
        assert not (set(fold["train"]) | set(fold["val"])) & official_val
    for label_file in sorted((raw / "labelsTr").glob("*.nii.gz")):
        label = nib.load(label_file)
        assert label.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1, 2}


def test_plans_hold_the_cpu_configuration_inheriting_3d_fullres(smoke_workflow):
    preprocessed = smoke_workflow / "results" / "nnunet" / "preprocessed" / DATASET
    plans = json.loads((preprocessed / f"{PLANS}.json").read_text())
    assert plans["experiment_planner_used"] == "nnUNetPlannerResEncM"
    demo = plans["configurations"]["3d_cpu_demo"]
    assert demo["inherits_from"] == "3d_fullres"
    full = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"]
    assert demo["architecture"]["arch_kwargs"]["features_per_stage"] == [max(4, f // 8) for f in full]
    assert (preprocessed / "splits_final.json").read_text() == (
        smoke_workflow / "results" / "dataset" / DATASET / "splits_final.json"
    ).read_text()


@pytest.mark.parametrize("fold", [0, 1])
def test_both_stages_trained_the_configured_epochs(smoke_workflow, fold):
    config = smoke_config(smoke_workflow)
    for trainer, stage in [("nnUNetTrainerPancreasSeg", "stage1"), ("nnUNetTrainerPancreasMultiTask", "stage2")]:
        folder = fold_folder(smoke_workflow, trainer, fold)
        checkpoint = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        assert checkpoint["trainer_name"] == trainer
        epochs = config["training"][stage]["num_epochs"]
        assert checkpoint["current_epoch"] == epochs
        logging = checkpoint["logging"]
        assert all(len(values) == epochs for values in logging.values()), {k: len(v) for k, v in logging.items()}
        # full_validation_every: 1 -> a full validation in every epoch, kept in nnU-Net's own per-epoch log
        assert not np.isnan(logging["full_val_combined"]).any()
        assert (fold_folder(smoke_workflow, trainer, fold, "training") / "progress.png").stat().st_size > 0
        # nnU-Net's final validation ran as its own job, on the published model
        summary = json.loads((folder / "validation" / "summary.json").read_text())
        assert summary["foreground_mean"]["Dice"] >= 0


def test_stage2_loaded_the_stage1_weights_and_says_so(smoke_workflow):
    log = (smoke_workflow / "logs" / "train_stage2_fold0.log").read_text()
    match = re.search(r"loaded (\d+) stage-1 tensors from (\S+); newly initialised head tensors: (\d+)", log)
    assert match, log[-3000:]
    assert match[2].endswith("checkpoint_best_combined.pth")  # stage2_init: best_combined
    assert int(match[1]) > 0 and int(match[3]) > 0


def test_best_f1_checkpoint_is_the_epoch_with_the_best_validation_f1(smoke_workflow):
    folder = fold_folder(smoke_workflow, "nnUNetTrainerPancreasMultiTask")
    final = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    f1 = final["logging"]["full_val_macro_f1"]
    best_epoch = int(np.argmax(f1))  # argmax: the earliest of equal bests
    checkpoint = torch.load(folder / "checkpoint_best_f1.pth", map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] - 1 == best_epoch
    assert checkpoint["logging"]["full_val_macro_f1"][best_epoch] == pytest.approx(max(f1))


def test_wandb_logged_offline_and_the_log_names_the_run(smoke_workflow):
    folder = fold_folder(smoke_workflow, "nnUNetTrainerPancreasMultiTask", root="training")
    runs = sorted((folder / "wandb").glob("offline-run-*"))
    assert runs, "no offline W&B run"
    assert any(runs[-1].glob("*.wandb"))
    assert "wandb sync" in (smoke_workflow / "logs" / "train_stage2_fold0.log").read_text()


def test_metrics_and_benchmark_say_which_folds_were_ensembled(smoke_workflow):
    metrics = json.loads((smoke_workflow / "results" / "metrics" / "summary.json").read_text())
    for key in ["whole_pancreas_dice_mean", "lesion_dice_mean", "macro_f1"]:
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["folds"] == [0, 1] and metrics["checkpoint"] == "checkpoint_best_combined.pth"
    benchmark = json.loads((smoke_workflow / "results" / "benchmark" / "summary.json").read_text())
    assert benchmark["folds"] == [0, 1]
    for key in [
        "speedup",
        "optimized_over_one_pass",
        "baseline_peak_memory_mb",
        "optimized_peak_memory_mb",
        "agreement_whole_dice",
        "same_subtype_fraction",
    ]:
        assert benchmark[key] is not None and benchmark[key] >= 0, key
    per_case = pd.read_csv(smoke_workflow / "results" / "benchmark" / "per_case.csv")
    assert list(dict.fromkeys(per_case["path"])) == list(ROWS) == [row["path"] for row in benchmark["rows"]]


def test_benchmark_rows_compare_like_for_like_with_cold_warm_and_per_case_split(smoke_workflow):
    """Six rows, each with cold and warm times; the optimized predictor at the stock's settings gives stock
    nnU-Net's masks; the per-case split holds the steps each row can measure."""
    out = smoke_workflow / "results" / "benchmark"
    benchmark = json.loads((out / "summary.json").read_text())
    for row in benchmark["rows"]:
        assert row["cold_seconds"] > 0 and row["warm_seconds"] > 0, row
        if row["path"] != "one_pass":  # every other row writes one mask per case
            assert 0 < row["first_case_cold_seconds"] <= row["cold_seconds"], row
    assert benchmark["stock_settings_agreement_whole_dice_min"] >= 0.99
    assert benchmark["optimized_over_end_to_end_bound"] > 0
    per_case = pd.read_csv(out / "per_case.csv").set_index("path")
    measured = per_case[list(STEPS)].notna().groupby(level=0).all()
    assert measured.loc["optimized"].all() and measured.loc["optimized_stock_settings"].all()
    assert measured.loc["end_to_end_bound"].all()
    assert list(measured.loc["stock_segmentation"]) == [False, True, False]
    assert list(measured.loc["one_pass"]) == [False, True, False]


def test_report_plots_and_the_html_report(smoke_workflow):
    for png in ["training_curves", "confusion_matrix", "dice_distribution", "overlay_montage"]:
        assert (smoke_workflow / "results" / "report" / f"{png}.png").stat().st_size > 10_000
    assert (smoke_workflow / "results" / "benchmark" / "benchmark.png").stat().st_size > 10_000
    result = run_snakemake(
        smoke_workflow, "--configfile", ".test/config_smoke.yaml", "--report", "results/report.html", timeout=600
    )
    assert result.returncode == 0, snakemake_output(result)[-3000:]
    html = (smoke_workflow / "results" / "report.html").read_text(errors="replace")
    assert "overlay_montage.png" in html and "benchmark.png" in html


def test_touching_the_inference_checkpoint_reruns_prediction(smoke_workflow):
    """Prediction declares the checkpoint it loads: a newer checkpoint_best_combined.pth makes it run again."""
    import os

    checkpoint = fold_folder(smoke_workflow, "nnUNetTrainerPancreasMultiTask") / "checkpoint_best_combined.pth"
    before = checkpoint.stat()
    try:
        os.utime(checkpoint)
        result = run_snakemake(
            smoke_workflow, "-n", "--cores", "1", "--configfile", ".test/config_smoke.yaml", timeout=300
        )
    finally:
        os.utime(checkpoint, ns=(before.st_atime_ns, before.st_mtime_ns))
    out = snakemake_output(result)
    assert result.returncode == 0, out[-3000:]
    assert "rule predict_split" in out and "rule benchmark_inference" in out, out[-3000:]
    assert "rule train_stage" not in out, out[-3000:]


def test_training_logged_the_share_of_patches_that_held_the_lesion(smoke_workflow):
    for trainer, keys in [
        ("nnUNetTrainerPancreasSeg", ["train_lesion_patch_share"]),
        ("nnUNetTrainerPancreasMultiTask", ["train_lesion_patch_share", "train_subtype_patch_share"]),
    ]:
        logging = torch.load(
            fold_folder(smoke_workflow, trainer) / "checkpoint_final.pth", map_location="cpu", weights_only=False
        )["logging"]
        for key in keys:
            assert logging[key] and all(0.0 <= share <= 1.0 for share in logging[key]), (trainer, key)


def test_lesion_prior_is_recorded_and_the_metrics_show_it_side_by_side(smoke_workflow):
    from pancreas_mtl.data.labels import LESION_LABEL

    for split in ("validation", "test"):
        predictions = smoke_workflow / "results" / "predictions" / split
        record = json.loads((predictions / "lesion_prior.json").read_text())
        assert record["enabled"] and record["relative_threshold"] == 0.5
        for case, change in record["changed_cases"].items():
            after = np.asarray(nib.load(predictions / f"{case}.nii.gz").dataobj)
            before = np.asarray(nib.load(predictions / "without_lesion_prior" / f"{case}.nii.gz").dataobj)
            assert not (before == LESION_LABEL).any()
            assert int((after == LESION_LABEL).sum()) == change["added_voxels"] > 0
            assert np.array_equal(after != before, after == LESION_LABEL)
        # every mask that the prior left alone holds a lesion or no pancreas to anchor one
        for mask in predictions.glob("quiz_*.nii.gz"):
            labels = np.asarray(nib.load(mask).dataobj)
            assert (labels == LESION_LABEL).any() or not (labels == 1).any(), mask.name
    metrics = json.loads((smoke_workflow / "results" / "metrics" / "summary.json").read_text())
    changed = metrics["lesion_prior"]["changed_cases"]
    validation_record = json.loads(
        (smoke_workflow / "results" / "predictions" / "validation" / "lesion_prior.json").read_text()
    )
    assert changed == sorted(validation_record["changed_cases"])
    effect = pd.read_csv(smoke_workflow / "results" / "metrics" / "lesion_prior_effect.csv")
    lesion_dice = effect[(effect["region"] == "lesion") & (effect["metric"] == "dice")].iloc[0]
    assert lesion_dice["with_prior"] == pytest.approx(metrics["lesion_dice_mean"], abs=1e-4)
    assert lesion_dice["without_prior"] == pytest.approx(metrics["lesion_dice_mean_without_prior"], abs=1e-4)
    if not changed:
        assert lesion_dice["change"] == 0


def test_summary_names_the_cases_that_selected_the_checkpoint(smoke_workflow):
    splits = json.loads((smoke_workflow / "results" / "dataset" / DATASET / "splits_final.json").read_text())
    metrics = json.loads((smoke_workflow / "results" / "metrics" / "summary.json").read_text())
    assert metrics["checkpoint_selection_cases"] == {str(fold): splits[fold]["val"] for fold in (0, 1)}
    validation = set(pd.read_csv(smoke_workflow / "results" / "metrics" / "segmentation_per_case.csv")["case_id"])
    assert not validation & {c for cases in metrics["checkpoint_selection_cases"].values() for c in cases}


def test_each_epoch_logged_its_iteration_time_and_data_wait(smoke_workflow):
    """Each epoch's seconds per iteration and share spent waiting for data, in nnU-Net's log and its per-epoch
    logging (which W&B gets too)."""
    config = smoke_config(smoke_workflow)
    for trainer, stage in [("nnUNetTrainerPancreasSeg", "stage1"), ("nnUNetTrainerPancreasMultiTask", "stage2")]:
        folder = fold_folder(smoke_workflow, trainer)
        logging = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
        seconds, share = logging["train_iteration_seconds"], logging["train_data_wait_share"]
        assert len(seconds) == len(share) == config["training"][stage]["num_epochs"]
        assert all(s > 0 for s in seconds) and all(0 <= w <= 1 for w in share)
        log = next(fold_folder(smoke_workflow, trainer, root="training").glob("training_log_*.txt")).read_text()
        assert re.search(r"\d+\.\d+ s per iteration, \d+\.\d% of it waiting for data", log)


def test_stage2_compiled_on_the_cpu_and_finished_its_final_validation(smoke_workflow):
    """The smoke config compiles stage 2 (nnU-Net alone never compiles on a CPU); nnU-Net's final validation ran
    as a job of its own, on the published, uncompiled model, and finished."""
    config = smoke_config(smoke_workflow)
    assert config["training"]["stage2"]["compile"] is True
    for trainer, compiled in [("nnUNetTrainerPancreasSeg", False), ("nnUNetTrainerPancreasMultiTask", True)]:
        log = next(fold_folder(smoke_workflow, trainer, root="training").glob("training_log_*.txt")).read_text()
        assert ("Using torch.compile" in log) is compiled
        if compiled:
            graphs = int(re.search(r"torch\.compile: (\d+) graphs compiled", log)[1])
            assert graphs > 0
        assert "final validation: skipped here" in log
        folder = fold_folder(smoke_workflow, trainer)
        validation_log = next(folder.glob("training_log_*.txt")).read_text()
        assert "Using torch.compile" not in validation_log
        assert "Mean Validation Dice" in validation_log and (folder / "validation" / "summary.json").is_file()
