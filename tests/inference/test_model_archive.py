"""The model archive's checks: what it packs, and the refusals that make an archive from someone else safe (a
corrupt or truncated file, a checksum mismatch, a missing fold, member names that leave the target folder, links,
and a checkpoint that would run code when loaded)."""

import json
import os
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from pancreas_mtl.errors import UserInputError
from pancreas_mtl.inference import model_archive as ma

MODEL = "nnUNetTrainerPancreasMultiTask__nnUNetResEncUNetMPlans__3d_cpu_demo"


def checkpoint_like_nnunets() -> dict:
    """What nnU-Net's save_checkpoint writes: weights, optimizer state, its logging (numpy scalars), init args."""
    return {
        "network_weights": OrderedDict(weight=torch.randn(2, 3), bias=torch.zeros(2)),
        "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]},
        "grad_scaler_state": None,
        "logging": {"ema_fg_dice": [np.float64(0.5), np.float32(0.6)], "epoch_end_timestamps": [1.0]},
        "_best_ema": np.float64(0.6),
        "current_epoch": 3,
        "init_args": {"plans": {"name": "p"}, "configuration": "3d_cpu_demo", "fold": 0, "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainerPancreasMultiTask",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }


def model_folder(root: Path, folds=(0, 1)) -> tuple[Path, Path]:
    folder = root / "Dataset501_PancreasQuiz" / MODEL
    for name in ("plans.json", "dataset.json"):
        (folder).mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps({"name": name}))
    for fold in folds:
        (folder / f"fold_{fold}").mkdir()
        torch.save(checkpoint_like_nnunets(), folder / f"fold_{fold}" / "checkpoint_final.pth")
    fingerprint = root / "dataset_fingerprint.json"
    fingerprint.write_text(json.dumps({"spacings": [[1, 1, 1]]}))
    return folder, fingerprint


@pytest.fixture
def archive(tmp_path) -> Path:
    folder, fingerprint = model_folder(tmp_path / "trained")
    members = ma.archive_members(folder, [0, 1], "checkpoint_final.pth", fingerprint)
    return ma.write_model_archive(members, {"workflow_commit": "abc"}, tmp_path / "model.zip")


def test_the_archive_has_nnunets_layout_and_a_card_with_every_checksum(archive, tmp_path):
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
    prefix = f"Dataset501_PancreasQuiz/{MODEL}"
    assert names == {
        f"{prefix}/{name}"
        for name in (
            "plans.json",
            "dataset.json",
            "dataset_fingerprint.json",
            "fold_0/checkpoint_final.pth",
            "fold_1/checkpoint_final.pth",
            ma.MODEL_CARD_FILE,
        )
    }
    card = ma.read_model_card(archive)
    assert card["workflow_commit"] == "abc" and card["format"] == ma.CARD_FORMAT
    assert set(card["files"]) == names - {f"{prefix}/{ma.MODEL_CARD_FILE}"}
    target = tmp_path / "installed"
    ma.extract_model_archive(archive, target)
    assert (target / prefix / "fold_1" / "checkpoint_final.pth").is_file()
    assert not list(tmp_path.glob(".*.partial"))


def test_a_missing_fold_is_named(tmp_path):
    folder, fingerprint = model_folder(tmp_path / "trained", folds=(0,))
    with pytest.raises(UserInputError, match=r"fold_1/checkpoint_final.pth"):
        ma.archive_members(folder, [0, 1], "checkpoint_final.pth", fingerprint)


def test_a_truncated_archive_is_a_clear_error(archive):
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match=r"model.zip: not a readable zip archive \(corrupt or truncated"):
        ma.read_model_card(archive)


def rewritten(archive: Path, change) -> Path:
    """The archive with its members passed through ``change(name, data) -> (name, data) | None``."""
    with zipfile.ZipFile(archive) as z:
        members = [(i.filename, z.read(i)) for i in z.infolist()]
    out = archive.with_name("changed.zip")
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members:
            kept = change(name, data)
            if kept is not None:
                z.writestr(*kept)
    return out


def test_a_checksum_mismatch_names_the_member_and_nothing_is_extracted(archive, tmp_path):
    changed = rewritten(
        archive, lambda name, data: (name, data + b" ") if name.endswith("plans.json") else (name, data)
    )
    target = tmp_path / "installed"
    with pytest.raises(UserInputError, match=r"plans.json: SHA-256 .* is not the model card's"):
        ma.extract_model_archive(changed, target)
    assert not target.exists()


def test_a_member_missing_or_added_is_named(archive):
    dropped = rewritten(archive, lambda name, data: None if "fold_1" in name else (name, data))
    with pytest.raises(UserInputError, match=r"fold_1/checkpoint_final.pth: listed in the model card, missing"):
        ma.read_model_card(dropped)


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt", "C:/evil.txt", "a\\..\\evil"])
def test_member_names_that_leave_the_target_are_refused(archive, tmp_path, name):
    evil = rewritten(archive, lambda n, data: (n, data))
    with zipfile.ZipFile(evil, "a") as z:
        z.writestr(zipfile.ZipInfo(name), b"x")
    target = tmp_path / "installed"
    with pytest.raises(UserInputError, match="unsafe members; nothing was extracted"):
        ma.extract_model_archive(evil, target)
    assert not target.exists() and not (tmp_path / "evil.txt").exists()


def test_a_link_member_is_refused(archive, tmp_path):
    link = zipfile.ZipInfo("Dataset501_PancreasQuiz/link")
    link.external_attr = 0o120777 << 16  # a symbolic link, as zip -y stores it
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr(link, "/etc/passwd")
    with pytest.raises(UserInputError, match="Dataset501_PancreasQuiz/link: a link"):
        ma.read_model_card(archive)


def test_an_nnunet_checkpoint_loads_without_running_code(archive, tmp_path):
    folder, _ = model_folder(tmp_path / "again")
    loaded = ma.load_checkpoint(folder / "fold_0" / "checkpoint_final.pth")
    assert torch.equal(loaded["network_weights"]["bias"], torch.zeros(2))
    assert loaded["init_args"]["device"] == torch.device("cpu") and loaded["_best_ema"] == 0.6


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_a_checkpoint_carrying_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "checkpoint_final.pth"
    torch.save({**checkpoint_like_nnunets(), "payload": RunsCode()}, path)
    with pytest.raises(UserInputError, match=r"checkpoint_final.pth: the checkpoint holds more than .* refused"):
        ma.load_checkpoint(path)
    assert not (tmp_path / "pwned.txt").exists()


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint_final.pth"
    torch.save(checkpoint_like_nnunets(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserInputError, match=r"checkpoint_final.pth: the checkpoint cannot be read \(corrupt or trunc"):
        ma.load_checkpoint(path)


def test_an_archive_from_other_versions_is_warned_about_naming_both(tmp_path):
    folder, fingerprint = model_folder(tmp_path / "trained")
    members = ma.archive_members(folder, [0], "checkpoint_final.pth", fingerprint)
    here = ma.package_versions()
    card = {"versions": {**here, "nnunetv2": "2.5.0"}}
    archive = ma.write_model_archive(members, card, tmp_path / "old.zip")
    warnings = ma.version_warnings(ma.read_model_card(archive), archive)
    assert warnings == [
        f"{archive}: the model was made with nnunetv2 2.5.0, this installation has nnunetv2 {here['nnunetv2']}"
    ]
    same = ma.write_model_archive(members, {"versions": here}, tmp_path / "same.zip")
    assert ma.version_warnings(ma.read_model_card(same), same) == []
