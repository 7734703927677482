"""Opt-in: real CT cases through conversion, the ResEnc M planner and one patch of the real network."""

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pancreas_mtl.benchmarks.real_scale import make_untrained_model_folder
from pancreas_mtl.data.conversion import convert_quiz_to_nnunet, convert_test_images
from pancreas_mtl.inference.predictor import MultiTaskPredictor
from pancreas_mtl.nnunet.environment import NnunetFolders, register_trainers
from pancreas_mtl.nnunet.planning import plan_and_preprocess

pytestmark = [pytest.mark.slow, pytest.mark.real_sample]


def test_real_sample_converts_plans_and_runs_one_patch_of_the_real_network(real_sample_dir, tmp_path):
    folders = NnunetFolders.under(tmp_path / "nnunet")
    raw = folders.raw / "Dataset502_RealSample"
    summary = convert_quiz_to_nnunet(
        real_sample_dir,
        raw,
        tmp_path / "splits.json",
        tmp_path / "cases.csv",
        dataset_name="Dataset502_RealSample",
        n_workers=2,
        allow_partial=True,
    )
    assert summary["cases"] == {"train": 1, "validation": 0}
    assert convert_test_images(real_sample_dir, tmp_path / "test_images", tmp_path / "test_cases.csv")["cases"] == {
        "test": 5
    }
    # exact geometry of the converted label, and labels rounded to {0,1,2}
    image = sitk.ReadImage(str(raw / "imagesTr" / "quiz_0_324_0000.nii.gz"))
    label = sitk.ReadImage(str(raw / "labelsTr" / "quiz_0_324.nii.gz"))
    assert image.GetSize() == label.GetSize()
    assert image.GetSpacing() == label.GetSpacing()
    assert image.GetOrigin() == label.GetOrigin()
    assert image.GetDirection() == label.GetDirection()
    assert set(np.unique(np.asarray(nib.load(raw / "labelsTr" / "quiz_0_324.nii.gz").dataobj))) == {0, 1, 2}

    plan_and_preprocess(folders, 502, planner="nnUNetPlannerResEncM", n_processes=2)
    preprocessed = folders.preprocessed / "Dataset502_RealSample"
    plans = json.loads((preprocessed / "nnUNetResEncUNetMPlans.json").read_text())
    full = plans["configurations"]["3d_fullres"]
    assert full["architecture"]["network_class_name"].endswith("ResidualEncoderUNet")
    assert full["spacing"][0] == pytest.approx(3.0)  # the real case's 3 mm slices, (z, y, x) order
    assert list((preprocessed / full["data_identifier"]).glob("quiz_0_324*"))

    # the real configuration's multi-task network, untrained: one patch, no mirroring (about 7 s on 2 cores)
    model = make_untrained_model_folder(
        preprocessed / "nnUNetResEncUNetMPlans.json", preprocessed / "dataset.json", "3d_fullres", tmp_path / "model"
    )
    register_trainers()
    predictor = MultiTaskPredictor(tile_step_size=1.0, mirror_axes=(), device=torch.device("cpu"))
    predictor.initialize_from_trained_model_folder(str(model), (0,), "checkpoint_final.pth")
    patch = tuple(full["patch_size"])
    with torch.inference_mode():
        seg, logits = predictor.network(torch.zeros((1, 1, *patch)), return_class_logits=True)
    assert seg.shape == (1, 3, *patch) and logits.shape == (1, 3)
