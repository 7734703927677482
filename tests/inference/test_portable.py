"""``pancreas-mtl install`` and ``pancreas-mtl predict`` on bad input: each refusal names the file and leaves nothing
half-written. Images of any name and format are staged and their masks written back on their exact grid. (A real
model through both commands, against the workflow's own predictions and stock nnU-Net: the smoke pipeline's tests.)
"""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pancreas_mtl.errors import UserInputError
from pancreas_mtl.inference import model_archive as ma
from pancreas_mtl.inference.cli import main
from pancreas_mtl.inference.new_images import find_images, stage_image, write_mask_like
from tests.inference.test_model_archive import RunsCode, checkpoint_like_nnunets, model_folder, rewritten

CLI = Path(sys.executable).parent / "pancreas-mtl"


def write_image(path: Path, shape=(12, 10, 8), affine=None) -> Path:
    affine = np.diag([-0.7, -0.7, 2.5, 1.0]) if affine is None else affine
    affine[:3, 3] = (101.5, 33.25, -412.0)
    image = nib.Nifti1Image(np.arange(np.prod(shape), dtype=np.int16).reshape(shape), affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


#: what the workflow's model card records of the run's prediction (config.yaml's values)
INFERENCE = {
    "tile_step_size": 0.5,
    "mirror_axes": [],
    "channels_last": False,
    "device": "auto",
    "resample_on_device": "auto",
    "preprocessing_workers": 1,
    "export_workers": 1,
}


def card_of(folder: Path) -> dict:
    return {
        "model": folder.name,
        "stage": "stage2",
        "folds": [0, 1],
        "checkpoint": "checkpoint_final.pth",
        "inference": INFERENCE,
        "lesion_prior": {"enabled": True, "relative_threshold": 0.5},
        "versions": ma.package_versions(),
    }


@pytest.fixture
def archive(tmp_path) -> Path:
    folder, fingerprint = model_folder(tmp_path / "trained")
    members = ma.archive_members(folder, [0, 1], "checkpoint_final.pth", fingerprint)
    return ma.write_model_archive(members, card_of(folder), tmp_path / "model.zip")


@pytest.fixture
def images(tmp_path) -> Path:
    return write_image(tmp_path / "images" / "scan one.nii.gz").parent


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed console command, as a user runs it."""
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


# ------------------------------------------------------------------------------------------ images
def test_images_of_any_name_and_format_are_staged_and_their_masks_land_on_their_exact_grid(tmp_path):
    """A .nii.gz, a .nii and a .mha of one volume: staged as nnU-Net inputs, and a mask on the staged grid written
    back under each input's name and format with the input's exact geometry."""
    folder = tmp_path / "in"
    first = write_image(folder / "Patient 7 (arterial).nii.gz", affine=np.diag([-0.68359375, -0.68359375, 0.8, 1]))
    shutil.copyfile(first, tmp_path / "copy.nii.gz")
    subprocess.run(["gunzip", "-c", str(tmp_path / "copy.nii.gz")], stdout=open(folder / "b.nii", "wb"), check=True)
    sitk.WriteImage(sitk.ReadImage(str(first)), str(folder / "c.mha"), useCompression=True)
    (folder / "notes.txt").write_text("not an image")
    found = find_images(folder)
    assert [i.path.name for i in found] == ["Patient 7 (arterial).nii.gz", "b.nii", "c.mha"]
    assert [i.case_id for i in found] == ["case_0001", "case_0002", "case_0003"]
    staged_dir, out = tmp_path / "staged", tmp_path / "out"
    staged_dir.mkdir(), out.mkdir()
    for image in found:
        staged = stage_image(image, staged_dir)
        assert staged.name == f"{image.case_id}_0000.nii.gz"
        np.testing.assert_array_equal(nib.load(str(staged)).get_fdata(), nib.load(str(first)).get_fdata())
        # a mask as nnU-Net writes it: SimpleITK, on the staged image's grid
        labels = sitk.GetImageFromArray((sitk.GetArrayFromImage(sitk.ReadImage(str(staged))) % 3).astype(np.uint8))
        labels.CopyInformation(sitk.ReadImage(str(staged)))
        mask_file = tmp_path / f"{image.case_id}.nii.gz"
        sitk.WriteImage(labels, str(mask_file))
        written = write_mask_like(mask_file, image, out / image.path.name)
        source, mask = sitk.ReadImage(str(image.path)), sitk.ReadImage(str(written))
        assert mask.GetSize() == source.GetSize() and mask.GetOrigin() == source.GetOrigin()
        assert mask.GetSpacing() == source.GetSpacing() and mask.GetDirection() == source.GetDirection()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(labels))
    for name in ("Patient 7 (arterial).nii.gz", "b.nii"):
        assert np.array_equal(nib.load(str(out / name)).affine, nib.load(str(first)).affine)


def test_a_trailing_singleton_axis_is_a_volume_and_2d_or_4d_images_are_named(tmp_path):
    folder = tmp_path / "in"
    write_image(folder / "ok.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4, 1), np.int16), np.eye(4)), str(folder / "singleton.nii.gz"))
    assert [i.path.name for i in find_images(folder)] == ["ok.nii.gz", "singleton.nii.gz"]
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4, 3), np.int16), np.eye(4)), str(folder / "series.nii.gz"))
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkInt16), str(folder / "slice.mha"))
    (folder / "broken.nii.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserInputError) as err:
        find_images(folder)
    problems = "\n".join(err.value.problems)
    assert f"{folder / 'series.nii.gz'}: a 4D image (6 x 5 x 4 x 3)" in problems
    assert f"{folder / 'slice.mha'}: a 2D image (32 x 32)" in problems
    assert f"{folder / 'broken.nii.gz'}: cannot be read as an image" in problems
    assert len(err.value.problems) == 3


# ------------------------------------------------------------------------------------------ refusals
def test_an_output_folder_holding_files_is_refused_untouched(archive, images, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "earlier.csv").write_text("keep me")
    result = run_cli("predict", "-m", str(archive), "-i", str(images), "-o", str(output))
    assert result.returncode == 2
    assert f"{output}: the output folder already holds 1 file(s) (earlier.csv)" in result.stderr
    assert "Traceback" not in result.stderr
    assert [p.name for p in output.iterdir()] == ["earlier.csv"]


def test_an_input_folder_without_images_is_named(archive, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    assert main(["predict", "-m", str(archive), "-i", str(empty), "-o", str(tmp_path / "out")]) == 2
    assert f"{empty}: no images (files ending in .nii.gz, .nii, .mha" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def no_output_left(tmp_path: Path, output: Path) -> bool:
    return not output.exists() and not list(output.parent.glob(f".{output.name}.partial-*"))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda z: z.write_bytes(z.read_bytes()[:4000]), "not a readable zip archive (corrupt or truncated"),
        (
            lambda z: rewritten(z, lambda n, d: (n, d + b" ") if n.endswith("dataset.json") else (n, d)).replace(z),
            "dataset.json: SHA-256",
        ),
    ],
    ids=["truncated", "checksum"],
)
def test_a_damaged_archive_is_refused_by_install_and_predict(archive, images, tmp_path, capsys, damage, message):
    damage(archive)
    output = tmp_path / "out"
    assert main(["predict", "-m", str(archive), "-i", str(images), "-o", str(output)]) == 2
    err = capsys.readouterr().err
    assert f"{archive}: " in err and message in err
    assert no_output_left(tmp_path, output)
    assert main(["install", str(archive), "-o", str(tmp_path / "results")]) == 2
    assert message in capsys.readouterr().err
    assert not list((tmp_path / "results").rglob("*.json"))


def test_a_fold_the_model_lacks_is_named(archive, images, tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["predict", "-m", str(archive), "-i", str(images), "-o", str(output), "--folds", "0", "3"]) == 2
    assert "fold(s) 3 not in the model (it has ['0', '1'])" in capsys.readouterr().err
    assert no_output_left(tmp_path, output)


def test_an_installed_folder_missing_a_fold_is_named(archive, images, tmp_path, capsys):
    folder, _ = ma.install_model_archive(archive, tmp_path / "results")
    (folder / "fold_1" / "checkpoint_final.pth").unlink()
    assert main(["predict", "-m", str(folder), "-i", str(images), "-o", str(tmp_path / "out")]) == 2
    assert f"{folder / 'fold_1' / 'checkpoint_final.pth'}: listed in the model card, missing" in capsys.readouterr().err


def evil_archive(tmp_path: Path) -> Path:
    """An archive whose fold-1 checkpoint runs a shell command when unpickled, with a matching model card."""
    folder, fingerprint = model_folder(tmp_path / "evil_trained")
    torch.save({**checkpoint_like_nnunets(), "payload": RunsCode()}, folder / "fold_1" / "checkpoint_final.pth")
    members = ma.archive_members(folder, [0, 1], "checkpoint_final.pth", fingerprint)
    return ma.write_model_archive(members, card_of(folder), tmp_path / "evil.zip")


def test_a_checkpoint_carrying_code_is_refused_by_install_and_predict(images, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = evil_archive(tmp_path)
    results = tmp_path / "results"
    assert main(["install", str(evil), "-o", str(results)]) == 2
    err = capsys.readouterr().err
    assert "fold_1/checkpoint_final.pth: the checkpoint holds more than an nnU-Net checkpoint's" in err
    assert not list(results.iterdir())
    output = tmp_path / "out"
    assert main(["predict", "-m", str(evil), "-i", str(images), "-o", str(output), "--device", "cpu"]) == 2
    assert "fold_1/checkpoint_final.pth: the checkpoint holds more than" in capsys.readouterr().err
    assert no_output_left(tmp_path, output)
    assert not (tmp_path / "pwned.txt").exists()


def test_a_member_leaving_the_target_is_refused_by_install(archive, tmp_path):
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("Dataset501_PancreasQuiz/../../escaped.txt", b"x")
    result = run_cli("install", str(archive), "-o", str(tmp_path / "results"))
    assert result.returncode == 2 and "'..' leads out of the target folder" in result.stderr
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "results").exists()


def test_install_refuses_to_replace_an_installed_model_and_prints_how_to_predict(archive, tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["install", str(archive), "-o", str(results)]) == 0
    out = capsys.readouterr().out
    folder = results / "Dataset501_PancreasQuiz" / ma.model_member_folder(ma.read_model_card(archive)).split("/")[1]
    assert f"pancreas-mtl predict -m {folder}" in out
    assert "nnUNet_extTrainer=" in out and "nnUNetv2_predict" in out and "-chk checkpoint_final.pth" in out
    assert ma.check_model_folder(folder)["folds"] == [0, 1]
    assert main(["install", str(archive), "-o", str(results)]) == 2
    assert f"{folder}: a model is already installed there" in capsys.readouterr().err
    assert not [p for p in results.iterdir() if p.name.startswith(".")]


def test_an_archive_from_another_version_is_warned_about(archive, tmp_path, capsys):
    card = ma.read_model_card(archive)
    folder, fingerprint = model_folder(tmp_path / "old")
    members = ma.archive_members(folder, [0, 1], "checkpoint_final.pth", fingerprint)
    versions = {**card["versions"], "pancreas_mtl": "0.0.1"}
    old = ma.write_model_archive(members, {**card, "versions": versions}, tmp_path / "old.zip")
    assert main(["install", str(old), "-o", str(tmp_path / "results")]) == 0
    here = ma.package_versions()["pancreas_mtl"]
    assert f"the model was made with pancreas_mtl 0.0.1, this installation has pancreas_mtl {here}" in (
        capsys.readouterr().err
    )


def test_cuda_asked_for_without_a_gpu_is_a_clear_error(archive, images, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    output = tmp_path / "out"
    assert main(["predict", "-m", str(archive), "-i", str(images), "-o", str(output), "--device", "cuda"]) == 2
    assert "--device cuda: torch sees no CUDA GPU" in capsys.readouterr().err
    assert no_output_left(tmp_path, output)


def test_the_console_command_is_installed_with_the_package():
    assert CLI.is_file() and os.access(CLI, os.X_OK)
    result = run_cli("predict", "--help")
    assert result.returncode == 0 and "--device {cpu,cuda,auto}" in result.stdout


def test_a_checkpoint_naming_another_trainer_than_its_folder_is_refused(tmp_path):
    """The trainer class is looked up by the name the (untrusted) checkpoint gives: only the one the folder is named
    after is accepted."""
    from pancreas_mtl.inference.predictor import MultiTaskPredictor

    folder, _ = model_folder(tmp_path / "trained", folds=(0,))
    torch.save(
        {**checkpoint_like_nnunets(), "trainer_name": "nnUNetTrainer"}, folder / "fold_0" / "checkpoint_final.pth"
    )
    predictor = MultiTaskPredictor(device=torch.device("cpu"))
    with pytest.raises(UserInputError, match="its checkpoints name the trainer 'nnUNetTrainer', the folder another"):
        predictor.initialize_from_untrusted_model_folder(folder, (0,), "checkpoint_final.pth")
