"""A folder of one subtype runs the segmentation path end to end: the main command on a quiz folder holding subtype 2
only (4 training cases in train/subtype2/, 2 validation cases laid out plainly, without a subtype folder, and a test
image), one stage-1 epoch. Stage 1 trains and predicts with the lesion-presence prior; the segmentation metrics and
figures are made; nothing that needs a second subtype is. The CPU configuration has a coarser spacing of its own (as
a real-CT benchmark on a CPU uses): its data is preprocessed apart, and the predictions come back on each case's grid.
"""

import json
import time

import nibabel as nib
import numpy as np
import pytest
import yaml

from pancreas_mtl.data.synthetic import make_synthetic_quiz
from tests.workflow_helpers import (
    ONE_EPOCH,
    TINY_CPU_CONFIGURATION,
    copy_workflow,
    run_snakemake,
    snakemake_output,
)

pytestmark = pytest.mark.slow

RUN_CONFIG = {
    "data": {"source": "folder", "quiz_dir": "quiz"},
    "nnunet": {"cpu_configuration": {**TINY_CPU_CONFIGURATION, "spacing": [4.0, 1.2, 1.2]}},
    "training": {"device": "cpu", "split": "official", "folds": [0], "stage1": ONE_EPOCH},
    "wandb": {"enabled": False},
    "resources": {"preprocess_threads": 2, "train_threads": 1, "predict_threads": 2},
}


@pytest.fixture(scope="module")
def segmentation_run(tmp_path_factory):
    """(workflow folder, Snakemake's output, seconds) of the main command on a subtype-2 folder."""
    workdir = copy_workflow(tmp_path_factory.mktemp("segmentation_only") / "workflow")
    make_synthetic_quiz(
        workdir / "quiz", seed=5, counts={"train": [0, 0, 4], "validation": [0, 0, 2], "test": 1}, n_workers=2
    )
    # the validation cases as a plain segmentation set lays them out: pairs directly in validation/
    for path in sorted((workdir / "quiz" / "validation" / "subtype2").iterdir()):
        path.rename(workdir / "quiz" / "validation" / path.name)
    (workdir / "quiz" / "validation" / "subtype2").rmdir()
    (workdir / "run.yaml").write_text(yaml.safe_dump(RUN_CONFIG))
    start = time.perf_counter()
    result = run_snakemake(workdir, "--cores", "2", "--configfile", "run.yaml", "--show-failed-logs", timeout=600)
    seconds = time.perf_counter() - start
    output = snakemake_output(result)
    if result.returncode != 0:
        pytest.fail(f"the segmentation-only run failed:\n{output[-6000:]}")
    print(f"segmentation-only main command: {seconds:.0f} s")
    return workdir, output, seconds


def test_the_mode_is_chosen_from_the_folder_and_logged(segmentation_run):
    _, output, _ = segmentation_run
    assert "only subtype 2 has training cases (0/0/4" in output and "the segmentation path runs alone" in output


def test_nothing_that_needs_a_second_subtype_is_made(segmentation_run):
    workdir, _, _ = segmentation_run
    results = workdir / "results"
    trained = list((results / "nnunet" / "trained").glob("*/*"))
    assert [m.name.split("__")[0] for m in trained] == ["nnUNetTrainerPancreasSeg"], trained
    for absent in (
        "subtype_results.csv",
        "submission.zip",
        "metrics/classification.json",
        "report/confusion_matrix.png",
        "benchmark",
        "predictions/validation/class_probabilities.csv",
        "predictions/test/class_probabilities.csv",
    ):
        assert not (results / absent).exists(), absent


def test_stage1_predicts_each_case_on_its_own_grid_with_the_prior_recorded(segmentation_run):
    workdir, _, _ = segmentation_run
    for split, images in (("validation", "quiz/validation"), ("test", "quiz/test")):
        folder = workdir / "results" / "predictions" / split
        record = json.loads((folder / "lesion_prior.json").read_text())
        assert record["enabled"] is True and record["relative_threshold"] == 0.5, record
        for image_file in sorted((workdir / images).glob("*_0000.nii.gz")):
            image = nib.load(image_file)
            mask = nib.load(folder / image_file.name.replace("_0000.nii.gz", ".nii.gz"))
            assert mask.shape == image.shape and np.allclose(mask.affine, image.affine, atol=1e-4), image_file
            assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}


def test_the_segmentation_metrics_and_figures_are_made(segmentation_run):
    workdir, _, _ = segmentation_run
    summary = json.loads((workdir / "results" / "metrics" / "summary.json").read_text())
    assert summary["n_segmentation_cases"] == 2 and summary["model"] == "stage1" and summary["head"] is None
    assert "whole_pancreas_dice_mean" in summary and "lesion_nsd_mean" in summary
    assert not {"macro_f1", "n_cases", "accuracy"} & set(summary), summary
    assert summary["checkpoint"] == "checkpoint_best_combined.pth"
    for figure in ("training_curves", "dice_distribution", "overlay_montage"):
        assert (workdir / "results" / "report" / f"{figure}.png").stat().st_size > 0, figure
    final = list((workdir / "results" / "nnunet" / "trained").glob("*/*/fold_0/validation/summary.json"))
    assert len(final) == 1, final


def test_stage1_trained_on_the_coarser_configurations_own_data(segmentation_run):
    workdir, _, _ = segmentation_run
    preprocessed = next((workdir / "results" / "nnunet" / "preprocessed").glob("Dataset*"))
    plans = json.loads((preprocessed / "nnUNetResEncUNetMPlans.json").read_text())["configurations"]["3d_cpu_demo"]
    assert plans["spacing"] == [4.0, 1.2, 1.2] and plans["data_identifier"] == "nnUNetResEncUNetMPlans_3d_cpu_demo"
    assert len(list((preprocessed / "nnUNetResEncUNetMPlans_3d_cpu_demo").glob("*.pkl"))) == 6
    assert not (preprocessed / "nnUNetPlans_3d_fullres").exists()


def test_the_finished_run_is_up_to_date(segmentation_run):
    workdir, _, _ = segmentation_run
    result = run_snakemake(workdir, "-n", "--cores", "2", "--configfile", "run.yaml")
    assert "Nothing to be done" in snakemake_output(result), snakemake_output(result)[-3000:]
