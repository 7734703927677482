"""The smoke run's trained model used elsewhere, as docs/trained-model.md says: exported by the workflow's
target, installed into a fresh folder, and run by ``pancreas-mtl predict`` and by stock ``nnUNetv2_predict``."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from pancreas_mtl.data.class_probabilities import read_class_probabilities
from tests.workflow_helpers import run_snakemake, snakemake_output

pytestmark = pytest.mark.slow

CLI = Path(sys.executable).parent / "pancreas-mtl"
ARCHIVE = "results/model/pancreas_mtl_model.zip"


def cli(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def installed(smoke_workflow, tmp_path_factory) -> tuple[Path, str]:
    """The smoke run's archive installed into a fresh results folder: (model folder, what install printed)."""
    result = run_snakemake(smoke_workflow, ARCHIVE, "--cores", "2", "--configfile", ".test/config_smoke.yaml")
    assert result.returncode == 0, snakemake_output(result)[-4000:]
    results = tmp_path_factory.mktemp("elsewhere") / "nnUNet_results"
    printed = cli("install", str(smoke_workflow / ARCHIVE), "-o", str(results)).stdout
    (folder,) = results.glob("Dataset*/*__*__*")
    return folder, printed


def test_the_installed_model_predicts_exactly_what_the_workflow_predicted(smoke_workflow, installed, tmp_path):
    folder, _ = installed
    card = json.loads((folder / "model_card.json").read_text())
    assert card["stage"] == "stage2" and card["folds"] == [0, 1]
    assert card["checkpoint"] == "checkpoint_best_combined.pth" and card["versions"]["nnunetv2"]
    output = tmp_path / "predicted"
    test_images = smoke_workflow / "resources" / "synthetic_quiz" / "test"
    printed = cli("predict", "-m", str(folder), "-i", str(test_images), "-o", str(output)).stdout
    images = sorted(test_images.glob("*.nii.gz"))
    assert [line.split(":")[0] for line in printed.splitlines() if line.startswith("[")] == [
        f"[{k}/{len(images)}] {image.name}" for k, image in enumerate(images, start=1)
    ]
    workflow = smoke_workflow / "results" / "predictions" / "test"
    for image in images:
        case = image.name.removesuffix("_0000.nii.gz")
        ours, theirs = nib.load(output / image.name), nib.load(workflow / f"{case}.nii.gz")
        assert np.array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj)), case
        assert np.array_equal(ours.affine, nib.load(image).affine) and ours.shape == nib.load(image).shape
    predicted = pd.read_csv(output / "predictions.csv")
    expected = read_class_probabilities(workflow)
    assert predicted["file"].tolist() == [f"{c}_0000.nii.gz" for c in expected["case_id"]]
    for k in range(3):
        assert predicted[f"prob_{k}"].tolist() == expected[f"prob_{k}"].tolist()
    assert predicted["subtype"].tolist() == expected["predicted_subtype"].tolist()
    prior = json.loads((output / "lesion_prior.json").read_text())
    workflow_prior = json.loads((workflow / "lesion_prior.json").read_text())
    assert prior["relative_threshold"] == workflow_prior["relative_threshold"] == 0.5
    assert sorted(prior["changed_cases"]) == [f"{c}_0000.nii.gz" for c in sorted(workflow_prior["changed_cases"])]


def test_stock_nnunet_predicts_with_the_installed_model(smoke_workflow, installed, tmp_path):
    """The command `pancreas-mtl install` prints, with stock nnU-Net's own predictor (no mirroring, as the workflow
    predicts): the masks the workflow predicted before its lesion-presence prior."""
    folder, printed = installed
    (line,) = [line for line in printed.splitlines() if "nnUNetv2_predict" in line]
    words = shlex.split(line)
    environment = dict(word.split("=", 1) for word in words if re.match(r"^nnUNet_\w+=", word))
    assert environment["nnUNet_results"] == str(folder.parent.parent)
    command = words[len(environment) :]
    output = tmp_path / "stock"
    test_images = smoke_workflow / "resources" / "synthetic_quiz" / "test"
    command = [c.replace("INPUT_DIR", str(test_images)).replace("OUTPUT_DIR", str(output)) for c in command]
    nnunet = shutil.which("nnUNetv2_predict", path=str(CLI.parent))
    env = {**os.environ, **environment, "nnUNet_raw": str(tmp_path), "nnUNet_preprocessed": str(tmp_path)}
    result = subprocess.run(
        [nnunet, *command[1:], "--disable_tta", "-device", "cpu", "-npp", "1", "-nps", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    workflow = smoke_workflow / "results" / "predictions" / "test"
    changed = json.loads((workflow / "lesion_prior.json").read_text())["changed_cases"]
    for image in sorted(test_images.glob("*.nii.gz")):
        case = image.name.removesuffix("_0000.nii.gz")
        before_prior = workflow / "without_lesion_prior" if case in changed else workflow
        stock = np.asarray(nib.load(output / f"{case}.nii.gz").dataobj)
        assert np.array_equal(stock, np.asarray(nib.load(before_prior / f"{case}.nii.gz").dataobj)), case


@pytest.mark.real_sample
def test_real_ct_of_any_name_and_format_gets_masks_on_its_exact_grid(real_sample_dir, installed, tmp_path):
    """The real sample's test images, renamed, plus a .nii and a .mha copy: a mask per input with its exact shape
    and geometry, and a subtype row per input."""
    folder, _ = installed
    sources = sorted((real_sample_dir / "test").glob("*_0000.nii.gz"))
    inputs = tmp_path / "scans"
    inputs.mkdir()
    for k, source in enumerate(sources):
        shutil.copyfile(source, inputs / f"patient {k} arterial.nii.gz")
    with open(inputs / "uncompressed.nii", "wb") as out:
        subprocess.run(["gunzip", "-c", str(sources[0])], stdout=out, check=True)
    sitk.WriteImage(sitk.ReadImage(str(sources[1])), str(inputs / "other format.mha"), useCompression=True)
    output = tmp_path / "masks"
    cli("predict", "-m", str(folder), "-i", str(inputs), "-o", str(output), "--device", "cpu")
    names = sorted(p.name for p in inputs.iterdir())
    assert pd.read_csv(output / "predictions.csv")["file"].tolist() == names
    for name in names:
        source, mask = sitk.ReadImage(str(inputs / name)), sitk.ReadImage(str(output / name))
        assert mask.GetSize() == source.GetSize(), name
        assert mask.GetOrigin() == source.GetOrigin() and mask.GetSpacing() == source.GetSpacing(), name
        assert mask.GetDirection() == source.GetDirection(), name
        assert set(np.unique(sitk.GetArrayViewFromImage(mask))) <= {0, 1, 2}, name
        if name.endswith((".nii", ".nii.gz")):
            assert np.array_equal(nib.load(output / name).affine, nib.load(inputs / name).affine), name


def test_the_installed_model_predicts_under_the_accelerator_standin(
    smoke_workflow, installed, tmp_path, accelerator_standin
):
    """`pancreas-mtl predict`'s path in this process (checkpoints loaded by the untrusted-model initialization, then
    the workflow's predictor), with its device tensors standing for GPU ones: it copies to the host explicitly."""
    from pancreas_mtl.inference.portable import predict_new_images

    folder, _ = installed
    test_images = smoke_workflow / "resources" / "synthetic_quiz" / "test"
    output = tmp_path / "predicted"
    predict_new_images(folder, test_images, output, device="cpu", echo=lambda line: None)
    assert accelerator_standin.host_copies > 0
    names = sorted(p.name for p in test_images.glob("*.nii.gz"))
    assert pd.read_csv(output / "predictions.csv")["file"].tolist() == names
    assert all((output / name).is_file() for name in names)
