"""The optimized predictor on the smoke workflow's trained multi-task model."""

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from pancreas_mtl.evaluation.segmentation import dice
from pancreas_mtl.inference.predictor import MultiTaskPredictor
from pancreas_mtl.inference.run import InferenceSettings, build_predictor, predict_images
from pancreas_mtl.nnunet.environment import register_trainers

pytestmark = pytest.mark.slow

MODEL = (
    "results/nnunet/trained/Dataset501_PancreasQuiz/nnUNetTrainerPancreasMultiTask__nnUNetResEncUNetMPlans__3d_cpu_demo"
)
# The test images, converted apart from the raw dataset (rule convert_test_images)
TEST_IMAGES = "results/dataset/Dataset501_PancreasQuiz/test_images"


def assert_same_geometry(prediction: Path, image: Path):
    a, b = nib.load(prediction), nib.load(image)
    assert a.shape == b.shape[:3], (prediction, a.shape, b.shape)
    assert np.allclose(a.affine, b.affine, atol=1e-5), (prediction, a.affine, b.affine)
    assert nib.aff2axcodes(a.affine) == nib.aff2axcodes(b.affine)
    sa, sb = sitk.ReadImage(str(prediction)), sitk.ReadImage(str(image))
    assert sa.GetSize() == sb.GetSize()
    assert np.allclose(sa.GetSpacing(), sb.GetSpacing(), atol=1e-6)
    assert np.allclose(sa.GetOrigin(), sb.GetOrigin(), atol=1e-4)
    assert np.allclose(sa.GetDirection(), sb.GetDirection(), atol=1e-6)
    assert set(np.unique(np.asarray(a.dataobj))) <= {0, 1, 2}


def test_predictions_have_exactly_the_input_geometry(smoke_workflow):
    dataset = smoke_workflow / "results" / "dataset" / "Dataset501_PancreasQuiz"
    raw = smoke_workflow / "results" / "nnunet" / "raw" / "Dataset501_PancreasQuiz"
    for split, table, images in [("validation", "case_table.csv", raw), ("test", "test_cases.csv", TEST_IMAGES)]:
        cases = pd.read_csv(dataset / table, dtype=str)
        rows = cases[cases["split"] == split]
        assert len(rows) > 0
        for case_id, image in zip(rows["case_id"], rows["image"]):
            prediction = smoke_workflow / "results" / "predictions" / split / f"{case_id}.nii.gz"
            assert_same_geometry(prediction, smoke_workflow / images / image)


def test_submission_files(smoke_workflow):
    results = smoke_workflow / "results"
    test_ids = sorted(p.name[: -len("_0000.nii.gz")] for p in (smoke_workflow / TEST_IMAGES).glob("*.nii.gz"))
    lines = (results / "subtype_results.csv").read_text().splitlines()
    assert lines[0] == "Names,Subtype"
    assert [line.split(",")[0] for line in lines[1:]] == [f"{c}.nii.gz" for c in test_ids]
    assert all(line.split(",")[1] in {"0", "1", "2"} for line in lines[1:])
    probabilities = pd.read_csv(results / "subtype_probabilities.csv")
    assert np.allclose(probabilities[["prob_0", "prob_1", "prob_2"]].sum(axis=1), 1.0, atol=1e-5)
    with zipfile.ZipFile(results / "submission.zip") as archive:
        assert sorted(archive.namelist()) == sorted(["subtype_results.csv", *[f"{c}.nii.gz" for c in test_ids]])


def test_with_the_baseline_settings_the_optimized_path_gives_stock_nnunets_masks(smoke_workflow):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    register_trainers()  # what nnUNet_extTrainer does for nnUNetv2_predict
    folder = str(smoke_workflow / MODEL)
    cpu = torch.device("cpu")
    stock = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, device=cpu, allow_tqdm=False)
    stock.initialize_from_trained_model_folder(folder, (0,), "checkpoint_final.pth")
    ours = MultiTaskPredictor(tile_step_size=0.5, use_gaussian=True, mirror_axes=None, device=cpu)
    ours.initialize_from_trained_model_folder(folder, (0,), "checkpoint_final.pth")
    assert ours.allowed_mirroring_axes == stock.allowed_mirroring_axes == (0, 1, 2) and ours.use_mirroring

    preprocessor = stock.configuration_manager.preprocessor_class(verbose=False)
    for image in sorted((smoke_workflow / TEST_IMAGES).glob("*.nii.gz")):
        data, _, _ = preprocessor.run_case(
            [str(image)], None, stock.plans_manager, stock.configuration_manager, stock.dataset_json
        )
        data = torch.from_numpy(data).float()
        expected = stock.predict_logits_from_preprocessed_data(data)
        actual = ours.predict_logits_from_preprocessed_data(data)
        assert torch.equal(actual.argmax(0), expected.argmax(0)), image.name
        assert torch.allclose(actual.float(), expected.float(), atol=1e-3)
        assert ours.last_class_probabilities.shape == (3,)


def test_optimized_predictions_on_real_ct_keep_the_real_geometry(smoke_workflow, real_sample_dir, tmp_path):
    """Real files (LPS, int16/int32/float64, 1.5-5 mm slices) through the demo model: exact input geometry back."""
    images = sorted((real_sample_dir / "test").glob("quiz_*_0000.nii.gz"))[:2]
    settings = InferenceSettings(
        tile_step_size=1.0,
        mirror_axes=(),
        channels_last=False,
        device="cpu",
        preprocessing_workers=1,
        export_workers=1,
        resample_on_device=False,
    )
    predictor = build_predictor(smoke_workflow / MODEL, [0], "checkpoint_final.pth", settings)
    try:
        probabilities = predict_images(predictor, images, tmp_path / "out", settings)
    finally:
        predictor.close()
    assert list(probabilities) == [i.name[: -len("_0000.nii.gz")] for i in images]
    for image in images:
        assert_same_geometry(tmp_path / "out" / image.name.replace("_0000.nii.gz", ".nii.gz"), image)


def test_two_folds_are_ensembled_for_both_heads(smoke_workflow):
    folder = str(smoke_workflow / MODEL)
    cpu = torch.device("cpu")
    predictors = {}
    for folds in [(0,), (1,), (0, 1)]:
        predictors[folds] = MultiTaskPredictor(tile_step_size=0.5, mirror_axes=(), device=cpu)
        predictors[folds].initialize_from_trained_model_folder(folder, folds, "checkpoint_best_combined.pth")
    image = sorted((smoke_workflow / TEST_IMAGES).glob("*.nii.gz"))[0]
    stock = predictors[(0,)]
    data, _, _ = stock.configuration_manager.preprocessor_class(verbose=False).run_case(
        [str(image)], None, stock.plans_manager, stock.configuration_manager, stock.dataset_json
    )
    data = torch.from_numpy(data).float()
    logits, probabilities = {}, {}
    for folds, predictor in predictors.items():
        logits[folds] = predictor.predict_logits_from_preprocessed_data(data).float()
        probabilities[folds] = predictor.last_class_probabilities
    assert not torch.allclose(logits[(0,)], logits[(1,)])  # two different models
    # each fold's logits are accumulated in half precision, as in nnU-Net's own loop (logits up to ~10: 8e-3 steps)
    assert torch.allclose(logits[(0, 1)], (logits[(0,)] + logits[(1,)]) / 2, atol=1e-2)
    assert np.allclose(probabilities[(0, 1)], (probabilities[(0,)] + probabilities[(1,)]) / 2, atol=1e-5)


def test_training_validation_and_prediction_give_the_same_masks_and_probabilities(
    smoke_workflow, tmp_path, monkeypatch
):
    """The trainer's full-volume validation and the workflow's prediction run the same core on the same checkpoint."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from pancreas_mtl.inference.workers import preprocess_case
    from pancreas_mtl.training.settings import SETTINGS_ENV
    from pancreas_mtl.training.trainers import nnUNetTrainerPancreasMultiTask

    root = smoke_workflow / "results" / "nnunet"
    model = smoke_workflow / MODEL
    checkpoint = "checkpoint_best_combined.pth"
    monkeypatch.setenv("nnUNet_raw", str(root / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(root / "preprocessed"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "trained"))  # the trainer's own folder: not the smoke run's
    work_fold = smoke_workflow / MODEL.replace("/trained/", "/training/") / "fold_0"
    monkeypatch.setenv(SETTINGS_ENV, str(work_fold / "training_settings.json"))
    plans = load_json(str(model / "plans.json"))
    plans["continue_training"] = False  # what nnUNetv2_train passes
    trainer = nnUNetTrainerPancreasMultiTask(
        plans, "3d_cpu_demo", 0, load_json(str(model / "dataset.json")), device=torch.device("cpu")
    )
    trainer.initialize()
    trainer.load_checkpoint(str(model / "fold_0" / checkpoint))
    assert trainer.settings.full_validation_tile_step == 0.5 and not trainer.settings.full_validation_mirroring
    validation = trainer.predict_validation_cases()
    assert validation

    settings = InferenceSettings(
        tile_step_size=0.5,
        mirror_axes=(),
        channels_last=False,
        device="cpu",
        preprocessing_workers=1,
        export_workers=1,
        resample_on_device=False,
    )
    predictor = build_predictor(model, [0], checkpoint, settings)
    images = [root / "raw" / "Dataset501_PancreasQuiz" / "imagesTr" / f"{key}_0000.nii.gz" for key in validation]
    try:
        predicted = predict_images(predictor, images, tmp_path / "masks", settings)
    finally:
        predictor.close()
    # a later call on bare preprocessed data files nothing under the name of the last case predicted
    last = list(predicted)[-1]
    data, _ = preprocess_case(
        str(images[0]), predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json
    )
    predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data))
    assert len(predicted) >= 2 and np.array_equal(predictor.class_probabilities[last], predicted[last])
    for key, (labels, probabilities, _) in validation.items():
        assert np.allclose(predicted[key], probabilities, atol=1e-6), key
        data, _ = preprocess_case(
            str(root / "raw" / "Dataset501_PancreasQuiz" / "imagesTr" / f"{key}_0000.nii.gz"),
            predictor.plans_manager,
            predictor.configuration_manager,
            predictor.dataset_json,
        )
        logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data))
        assert np.array_equal(logits.argmax(0).numpy(), labels), key
        assert np.allclose(predictor.last_class_probabilities, probabilities, atol=1e-6), key


def _predict_both_ways(model: Path, images: list[Path], out: Path, lesion_prior_threshold=None):
    """Masks and class probabilities with nnU-Net's CPU export and with the torch resampling (on the CPU here)."""
    results = {}
    for on_device in (False, True):
        settings = InferenceSettings(
            tile_step_size=0.5,
            mirror_axes=(),
            channels_last=False,
            device="cpu",
            preprocessing_workers=1,
            export_workers=1,
            resample_on_device=on_device,
        )
        predictor = build_predictor(model, [0], "checkpoint_final.pth", settings)
        assert predictor.resample_on_device is on_device
        try:
            probabilities = predict_images(predictor, images, out / str(on_device), settings, lesion_prior_threshold)
        finally:
            predictor.close()
        results[on_device] = probabilities, dict(predictor.lesion_prior_changes)
    return results


def _whole_dice_per_case(out: Path, images: list[Path]) -> dict[str, float]:
    dices = {}
    for image in images:
        name = image.name.replace("_0000.nii.gz", ".nii.gz")
        a, b = (np.asarray(nib.load(out / str(flag) / name).dataobj) for flag in (False, True))
        assert_same_geometry(out / "True" / name, image)
        assert (a > 0).any() or (b > 0).any(), f"{name}: no pancreas predicted either way, nothing compared"
        dices[name] = dice(a > 0, b > 0)
    return dices


def test_resampling_on_the_device_gives_nnunets_masks_and_the_same_prior(smoke_workflow, tmp_path):
    """The torch export path (a GPU's, run on the CPU here) against nnU-Net's, lesion-presence prior on."""
    images = sorted(
        (smoke_workflow / "results" / "nnunet" / "raw" / "Dataset501_PancreasQuiz" / "imagesTr").glob("*_0000.nii.gz")
    )[:3]
    results = _predict_both_ways(smoke_workflow / MODEL, images, tmp_path, lesion_prior_threshold=0.5)
    dices = _whole_dice_per_case(tmp_path, images)
    assert min(dices.values()) >= 0.99, dices
    (cpu, cpu_prior), (torch_path, torch_prior) = results[False], results[True]
    assert cpu_prior.keys() == torch_prior.keys()
    for case in cpu:
        assert np.array_equal(cpu[case], torch_path[case])  # the class head does not see the export


def test_resampling_on_the_device_agrees_with_nnunet_on_real_ct(smoke_workflow, real_sample_dir, tmp_path):
    """Real spacings (anisotropic: nnU-Net's separate-z path) through the torch export: whole-pancreas Dice
    >= 0.99 per case against nnU-Net's export."""
    images = sorted((real_sample_dir / "test").glob("quiz_*_0000.nii.gz"))[:2]
    _predict_both_ways(smoke_workflow / MODEL, images, tmp_path)
    dices = _whole_dice_per_case(tmp_path, images)
    assert min(dices.values()) >= 0.99, dices


def test_the_device_export_writes_nnunets_masks_and_prior_for_a_case_without_a_predicted_lesion(
    smoke_workflow, tmp_path
):
    """Export functions called directly: nnU-Net's CPU export against the torch resampling + cropped export, on logits
    whose lesion channel never wins, so that the lesion-presence prior has to add the lesion on both paths."""
    from pancreas_mtl.inference.device_resampling import segmentation_on_input_crop
    from pancreas_mtl.inference.lesion_prior import lesion_output_channel
    from pancreas_mtl.inference.workers import export_case, export_cropped_labels, preprocess_case

    settings = InferenceSettings(
        tile_step_size=0.5,
        mirror_axes=(),
        channels_last=False,
        device="cpu",
        preprocessing_workers=1,
        export_workers=1,
        resample_on_device=False,
    )
    predictor = build_predictor(smoke_workflow / MODEL, [0], "checkpoint_final.pth", settings, start_workers=False)
    image = sorted(
        (smoke_workflow / "results" / "nnunet" / "raw" / "Dataset501_PancreasQuiz" / "imagesTr").glob("*_0000.nii.gz")
    )[0]
    pm, cm, dj = predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json
    data, properties = preprocess_case(str(image), pm, cm, dj)
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).clone()
    label_manager = pm.get_label_manager(dj)
    lesion = lesion_output_channel(label_manager)
    # below every other channel: linear resampling (non-negative weights) keeps it below, so the lesion never wins
    others = torch.cat([logits[:lesion], logits[lesion + 1 :]]).min(0).values
    logits[lesion] = torch.minimum(logits[lesion], others - 1.0)

    cpu = export_case(logits.numpy(), properties, cm, pm, dj, str(tmp_path / "cpu"), 0.5)
    labels, probabilities = segmentation_on_input_crop(logits, properties, pm, cm, label_manager)
    moved = export_cropped_labels(
        labels, probabilities[lesion].float().numpy(), properties, pm, dj, str(tmp_path / "device"), 0.5
    )
    assert cpu["added_voxels"] > 0 and moved["added_voxels"] > 0
    assert abs(cpu["added_voxels"] - moved["added_voxels"]) <= 0.01 * cpu["added_voxels"]
    a, b = (np.asarray(nib.load(tmp_path / f"{name}.nii.gz").dataobj) for name in ("cpu", "device"))
    assert_same_geometry(tmp_path / "device.nii.gz", image)
    assert dice(a == 2, b == 2) >= 0.99 and dice(a > 0, b > 0) >= 0.99
    for name in ("cpu", "device"):  # the mask before the prior is kept beside, without lesion
        before = np.asarray(nib.load(tmp_path / "without_lesion_prior" / f"{name}.nii.gz").dataobj)
        assert not (before == 2).any()


def test_the_accelerator_standin_refuses_host_conversions_until_copied(accelerator_standin):
    """The stand-in can fail: a marked tensor refuses numpy and pickling as a CUDA tensor does; .cpu() frees it."""
    import pickle

    from tests.accelerator import on_accelerator

    tensor = on_accelerator(torch.arange(6.0).reshape(2, 3))
    derived = torch.softmax(tensor * 2, dim=0).argmax(0)  # what is computed from a device tensor stays there
    for marked in (tensor, derived):
        with pytest.raises(TypeError, match="cuda:0 device type tensor to numpy"):
            marked.numpy()
        with pytest.raises(TypeError, match="cuda:0 device type tensor to numpy"):
            np.asarray(marked)
        with pytest.raises(TypeError, match="pickled"):
            pickle.dumps(marked)
    assert derived.sum().item() == 3  # .item() works on a GPU too
    assert np.array_equal(derived.cpu().numpy(), [1, 1, 1]) and accelerator_standin.host_copies == 1


def test_the_device_export_runs_under_the_accelerator_standin(smoke_workflow, tmp_path, accelerator_standin):
    """Defect: the GPU export took nnU-Net's argmax, which calls .numpy() on the device's probabilities (a
    TypeError on CUDA, which the out-of-memory fallback did not catch). Under the stand-in it must write the masks
    nnU-Net's CPU export writes, copying to the host explicitly."""
    images = sorted(
        (smoke_workflow / "results" / "nnunet" / "raw" / "Dataset501_PancreasQuiz" / "imagesTr").glob("*_0000.nii.gz")
    )[:2]
    _predict_both_ways(smoke_workflow / MODEL, images, tmp_path, lesion_prior_threshold=0.5)
    assert accelerator_standin.host_copies > 0
    dices = _whole_dice_per_case(tmp_path, images)
    assert min(dices.values()) >= 0.99, dices


def test_every_benchmark_row_runs_under_the_accelerator_standin(smoke_workflow, tmp_path, accelerator_standin):
    """The six benchmark rows, in this process, with the device export: each computes, and writes its masks."""
    from pancreas_mtl.benchmarks.inference import ROWS, run_row

    images = sorted((smoke_workflow / TEST_IMAGES).glob("*_0000.nii.gz"))[:1]
    assert images
    settings = InferenceSettings(
        tile_step_size=0.5,
        mirror_axes=(),
        channels_last=False,
        device="cpu",
        preprocessing_workers=1,
        export_workers=1,
        resample_on_device=True,
    )
    for row in ROWS:
        result = run_row(
            row, smoke_workflow / MODEL, [0], "checkpoint_final.pth", images, tmp_path, settings, repeats=0
        )
        assert result["per_case"][0]["compute_seconds"] > 0, row
        if row != "one_pass":  # the compute-only bound writes nothing
            assert (tmp_path / row / images[0].name.replace("_0000", "")).is_file(), row
    assert accelerator_standin.host_copies > 0


def test_a_segmentation_model_predicts_under_the_accelerator_standin(smoke_workflow, tmp_path, accelerator_standin):
    """The segmentation-only path: stage 1's model (no classification head) through the workflow's predictor with
    the device export and the lesion-presence prior: masks on each image's grid, no class probabilities."""
    import shutil

    stage1 = smoke_workflow / MODEL.replace("nnUNetTrainerPancreasMultiTask__", "nnUNetTrainerPancreasSeg__")
    model = tmp_path / "model"
    shutil.copytree(stage1, model)
    for name in ("plans.json", "dataset.json"):  # what model_folder_metadata writes beside the folds
        shutil.copy(smoke_workflow / MODEL / name, model / name)
    images = sorted(
        (smoke_workflow / "results" / "nnunet" / "raw" / "Dataset501_PancreasQuiz" / "imagesTr").glob("*_0000.nii.gz")
    )[:2]
    settings = InferenceSettings(
        tile_step_size=0.5,
        mirror_axes=(),
        channels_last=False,
        device="cpu",
        preprocessing_workers=1,
        export_workers=1,
        resample_on_device=True,
    )
    with pytest.raises(TypeError, match="no classification head"):
        build_predictor(model, [0], "checkpoint_final.pth", settings)
    predictor = build_predictor(model, [0], "checkpoint_final.pth", settings, classification=False)
    try:
        probabilities = predict_images(predictor, images, tmp_path / "out", settings, lesion_prior_threshold=0.5)
    finally:
        predictor.close()
    assert probabilities == {} and accelerator_standin.host_copies > 0
    for image in images:
        assert_same_geometry(tmp_path / "out" / image.name.replace("_0000.nii.gz", ".nii.gz"), image)
