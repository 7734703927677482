"""Region-based training end to end: the main command with ``training.labels: regions`` on a tiny synthetic quiz
(official split, one epoch per stage), up to the metrics and the submission. The conversion declares the regions,
both stages train two sigmoid outputs, stage 2 starts from stage 1, and the predictions are label maps on each
case's grid, with the lesion prior recorded and class probabilities from the region network.
"""

import csv
import json
import zipfile

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from tests.workflow_helpers import ONE_EPOCH, TINY_CPU_CONFIGURATION, copy_workflow, run_snakemake, snakemake_output

pytestmark = pytest.mark.slow

RUN_CONFIG = {
    "synthetic": {"seed": 3, "counts": {"train": [3, 3, 3], "validation": [1, 1, 1], "test": 1}},
    "nnunet": {"cpu_configuration": TINY_CPU_CONFIGURATION},
    "training": {
        "device": "cpu",
        "labels": "regions",
        "split": "official",
        "folds": [0],
        "stage1": ONE_EPOCH,
        "stage2": {**ONE_EPOCH, "classification_warmup_epochs": 1},
    },
    "wandb": {"enabled": False},
    "resources": {"preprocess_threads": 2, "train_threads": 1, "predict_threads": 2},
}
TARGETS = ("results/metrics/summary.json", "results/submission.zip")


@pytest.fixture(scope="module")
def region_run(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("regions") / "workflow")
    (workdir / "run.yaml").write_text(yaml.safe_dump(RUN_CONFIG))
    result = run_snakemake(
        workdir, *TARGETS, "--cores", "2", "--configfile", "run.yaml", "--show-failed-logs", timeout=900
    )
    if result.returncode != 0:
        pytest.fail(f"the region-labels run failed:\n{snakemake_output(result)[-6000:]}")
    return workdir


def test_the_conversion_declares_the_regions(region_run):
    (dataset_json,) = (region_run / "results" / "nnunet" / "raw").glob("Dataset*/dataset.json")
    labels = json.loads(dataset_json.read_text())
    assert labels["labels"] == {"background": 0, "whole_pancreas": [1, 2], "lesion": [2]}
    assert labels["regions_class_order"] == [1, 2]


def test_both_stages_train_two_region_outputs(region_run):
    trained = sorted((region_run / "results" / "nnunet" / "trained").glob("*/*/fold_0/checkpoint_final.pth"))
    assert len(trained) == 2, trained
    for checkpoint in trained:
        weights = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
        outputs = {
            k: v.shape[0] for k, v in weights.items() if k.startswith("decoder.seg_layers.") and k.endswith("weight")
        }
        assert outputs and set(outputs.values()) == {2}, (checkpoint, outputs)


def test_predictions_are_label_maps_on_each_grid_with_the_prior_and_class_probabilities(region_run):
    quiz = region_run / "resources" / "synthetic_quiz"
    for split in ("validation", "test"):
        folder = region_run / "results" / "predictions" / split
        assert json.loads((folder / "lesion_prior.json").read_text())["enabled"] is True
        images = sorted((quiz / split).rglob("*_0000.nii.gz"))
        assert images
        for image_file in images:
            image = nib.load(image_file)
            mask = nib.load(folder / image_file.name.replace("_0000.nii.gz", ".nii.gz"))
            assert mask.shape == image.shape and np.allclose(mask.affine, image.affine, atol=1e-4), image_file
            assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
        with open(folder / "class_probabilities.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == len(images)
        for row in rows:
            assert abs(sum(float(row[f"prob_{s}"]) for s in range(3)) - 1) < 1e-4, row


def test_the_metrics_and_the_submission_are_made(region_run):
    summary = json.loads((region_run / "results" / "metrics" / "summary.json").read_text())
    for key in ("whole_pancreas_dice_mean", "lesion_dice_mean", "macro_f1"):
        assert summary[key] is not None and 0 <= summary[key] <= 1, (key, summary[key])
    with zipfile.ZipFile(region_run / "results" / "submission.zip") as archive:
        assert "subtype_results.csv" in archive.namelist()
