"""A trained model as one portable archive, and the checks that make an archive from someone else safe to use.

The archive is nnU-Net's export layout, so that ``nnUNetv2_install_pretrained_model_from_zip`` installs it::

    Dataset501_PancreasQuiz/<trainer>__<plans>__<configuration>/plans.json
                                                               /dataset.json
                                                               /dataset_fingerprint.json
                                                               /fold_<F>/<checkpoint>.pth
                                                               /model_card.json

``model_card.json`` (this module owns its format) says what the model is and how it was made, and holds the
SHA-256 of every other member. Reading an archive checks, before anything is written: that it is a whole zip file,
that every member name stays inside the target folder (no absolute path, no ``..``, no link: :mod:`zipfile` would
silently rewrite such names, so they are refused explicitly), that it holds exactly one model card, and that every
member's checksum matches the card.

A checkpoint is a pickle: nnU-Net loads it with ``torch.load(weights_only=False)``, which runs whatever code the
file holds. :func:`load_checkpoint` loads with ``weights_only=True`` and allows only the types nnU-Net's checkpoints
hold; anything else is refused with an error naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from pancreas_mtl.errors import UserInputError

MODEL_CARD_FILE = "model_card.json"
#: the model card's format; a reader refuses a newer one
CARD_FORMAT = 1
#: what a model folder must hold besides its folds
MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
#: the non-tensor types an nnU-Net checkpoint holds (its logging's numpy scalars, the trainer's device)
CHECKPOINT_TYPES = [np._core.multiarray.scalar, np.dtype, torch.device, *(type(np.dtype(t)) for t in "fdil?")]


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- writing
def archive_members(
    model_folder: str | Path, folds: Sequence[int | str], checkpoint: str, fingerprint: str | Path
) -> list[tuple[Path, str]]:
    """(file, member name) of every file an archive of ``model_folder`` holds, in nnU-Net's export layout; a clear
    error naming each missing file."""
    model_folder = Path(model_folder)
    prefix = f"{model_folder.parent.name}/{model_folder.name}"
    members = [
        (model_folder / "plans.json", f"{prefix}/plans.json"),
        (model_folder / "dataset.json", f"{prefix}/dataset.json"),
        (Path(fingerprint), f"{prefix}/dataset_fingerprint.json"),
    ]
    members += [(model_folder / f"fold_{f}" / checkpoint, f"{prefix}/fold_{f}/{checkpoint}") for f in folds]
    missing = [str(path) for path, _ in members if not path.is_file()]
    if missing:
        raise UserInputError(f"{model_folder}: the trained model lacks files for its archive", missing)
    return members


def write_model_archive(members: Sequence[tuple[Path, str]], card: Mapping, out_zip: str | Path) -> Path:
    """The archive of ``members`` with the model card (``card`` plus the members' checksums) beside them, written to
    a temporary name and renamed into place: an interrupted export leaves no archive."""
    out_zip = Path(out_zip)
    names = [name for _, name in members]
    problems = unsafe_member_names(names)
    if problems:
        raise ValueError(f"unsafe member names: {problems}")
    model_prefix = str(PurePosixPath(names[0]).parent)
    full_card = {
        **card,
        "format": CARD_FORMAT,
        "files": {name: sha256_file(path) for path, name in members},
    }
    partial = out_zip.with_name(f".{out_zip.name}.partial")
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for path, name in members:
                archive.write(path, name)
            archive.writestr(f"{model_prefix}/{MODEL_CARD_FILE}", json.dumps(full_card, indent=2, sort_keys=True))
        os.replace(partial, out_zip)
    finally:
        partial.unlink(missing_ok=True)
    return out_zip


def package_versions() -> dict[str, str | None]:
    """The versions of what a model needs to run: torch, nnunetv2 and this package."""
    from importlib.metadata import PackageNotFoundError, version

    import pancreas_mtl

    versions: dict[str, str | None] = {"pancreas_mtl": pancreas_mtl.__version__}
    for name in ("torch", "nnunetv2"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def model_card(
    *,
    model: str,
    stage: str,
    folds: Sequence[int | str],
    checkpoint: str,
    case_counts: Mapping,
    selection_cases: Mapping[str, Sequence[str]],
    metrics: Mapping | None,
    inference: Mapping,
    lesion_prior: Mapping,
    config: Mapping,
    commit: str | None,
) -> dict:
    """What ``model_card.json`` says of a model, besides the checksums :func:`write_model_archive` adds: what it is,
    how it was trained and chosen, how it scored and how it predicts. Case counts only, never the images."""
    return {
        "model": model,
        "stage": stage,
        "folds": list(folds),
        "checkpoint": checkpoint,
        "labels": config.get("training", {}).get("labels", "softmax"),
        "case_counts": dict(case_counts),
        "selection_cases": {str(k): list(v) for k, v in selection_cases.items()},
        "validation_metrics": dict(metrics) if metrics is not None else None,
        "inference": dict(inference),
        "lesion_prior": dict(lesion_prior),
        "versions": package_versions(),
        "workflow_commit": commit,
        "config": dict(config),
    }


# ---------------------------------------------------------------------------------------------- reading
def unsafe_member_names(names: Sequence[str], infos: Sequence[zipfile.ZipInfo] = ()) -> list[str]:
    """A problem per member name that would leave the target folder (absolute, ``..``, a drive or a backslash) or
    per member that is a link."""
    problems = []
    for name in names:
        path = PurePosixPath(name)
        if name.startswith(("/", "\\")) or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
            problems.append(f"{name}: an absolute path")
        elif "\\" in name:
            problems.append(f"{name}: a backslash in a member name")
        elif ".." in path.parts:
            problems.append(f"{name}: '..' leads out of the target folder")
    for info in infos:
        if stat.S_ISLNK(info.external_attr >> 16):
            problems.append(f"{info.filename}: a link")
    return problems


def read_model_card(zip_path: str | Path) -> dict:
    """The archive's model card, after checking the archive whole and safe and every member against its checksum;
    a clear error naming the archive otherwise. Nothing is extracted."""
    zip_path = Path(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            infos = archive.infolist()
            problems = unsafe_member_names([i.filename for i in infos], infos)
            if problems:
                raise UserInputError(f"{zip_path}: the archive holds unsafe members; nothing was extracted", problems)
            cards = [i.filename for i in infos if PurePosixPath(i.filename).name == MODEL_CARD_FILE]
            if len(cards) != 1:
                raise UserInputError(
                    f"{zip_path}: expected one {MODEL_CARD_FILE} in the archive, found {len(cards)}: it is not a "
                    "model archive of this workflow"
                )
            card = _parsed_card(archive.read(cards[0]), f"{zip_path}: {cards[0]}")
            problems = _checksum_problems(archive, card["files"], set(cards))
            if problems:
                raise UserInputError(f"{zip_path}: the archive does not match its model card", problems)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as err:
        raise UserInputError(f"{zip_path}: not a readable zip archive (corrupt or truncated: {err})") from err
    return card


def _parsed_card(text: str | bytes, where: str) -> dict:
    """A model card's JSON, checked to list its files and to be a format this package reads."""
    try:
        card = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserInputError(f"{where}: not valid JSON ({err})") from err
    if not isinstance(card, dict) or not isinstance(card.get("files"), dict):
        raise UserInputError(f"{where}: the model card has no file list")
    if int(card.get("format", 0)) > CARD_FORMAT:
        raise UserInputError(
            f"{where}: model card format {card.get('format')} is newer than this package reads ({CARD_FORMAT}); "
            "update pancreas-mtl"
        )
    return card


def _checksum_problems(archive: zipfile.ZipFile, expected: Mapping[str, str], cards: set[str]) -> list[str]:
    present = {i.filename for i in archive.infolist() if not i.is_dir()} - cards
    problems = [
        f"{name}: listed in the model card, missing from the archive" for name in sorted(set(expected) - present)
    ]
    problems += [f"{name}: in the archive, not in the model card" for name in sorted(present - set(expected))]
    for name in sorted(present & set(expected)):
        digest = hashlib.sha256()
        try:
            with archive.open(name) as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
        except (zipfile.BadZipFile, OSError, EOFError) as err:  # a damaged member (CRC) or a truncated file
            problems.append(f"{name}: cannot be read ({err})")
            continue
        if digest.hexdigest() != expected[name]:
            problems.append(
                f"{name}: SHA-256 {digest.hexdigest()[:12]}... is not the model card's {expected[name][:12]}..."
            )
    return problems


def version_warnings(card: Mapping, zip_path: str | Path) -> list[str]:
    """A warning per package whose version differs between the archive's training and this installation (nnunetv2
    and this package: their checkpoints and predictors may differ; torch too)."""
    here = package_versions()
    made = card.get("versions") or {}
    return [
        f"{zip_path}: the model was made with {name} {made[name]}, this installation has {name} {here.get(name)}"
        for name in ("nnunetv2", "pancreas_mtl", "torch")
        if made.get(name) is not None and made.get(name) != here.get(name)
    ]


def extract_model_archive(zip_path: str | Path, target: str | Path) -> dict:
    """Check the archive (:func:`read_model_card`), then extract it inside ``target`` (nnU-Net's results folder
    layout); returns the model card. Member names were checked, so every file lands inside ``target``."""
    card = read_model_card(zip_path)
    _extract_checked(zip_path, target)
    return card


def _extract_checked(zip_path: str | Path, target: str | Path) -> None:
    """Extract an archive :func:`read_model_card` has checked inside ``target``."""
    target = Path(target).resolve()
    with zipfile.ZipFile(zip_path) as archive:
        for info in archive.infolist():
            destination = (target / info.filename).resolve()
            if target not in destination.parents and destination != target:  # the names were checked: a guard
                raise UserInputError(f"{zip_path}: {info.filename} would be written outside {target}")
            if info.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            partial = destination.with_name(f".{destination.name}.partial")
            with archive.open(info) as source, open(partial, "wb") as out:
                for block in iter(lambda: source.read(1 << 20), b""):
                    out.write(block)
            os.replace(partial, destination)


def check_model_folder(model_folder: str | Path) -> dict:
    """The model card of an installed model folder (``<results>/<dataset>/<model>``), after checking every file it
    lists against its checksum; a clear error naming the folder otherwise."""
    model_folder = Path(model_folder)
    card_path = model_folder / MODEL_CARD_FILE
    if not card_path.is_file():
        raise UserInputError(
            f"{model_folder}: no {MODEL_CARD_FILE}; give a model archive (.zip) or a folder that "
            "`pancreas-mtl install` wrote"
        )
    card = _parsed_card(card_path.read_text(), str(card_path))
    problems = unsafe_member_names(list(card["files"]))
    if not problems:  # names checked first: a listed file is only read inside the results folder
        for name, expected in sorted(card["files"].items()):
            path = model_folder.parent.parent / name
            if not path.is_file():
                problems.append(f"{path}: listed in the model card, missing")
            elif sha256_file(path) != expected:
                problems.append(f"{path}: SHA-256 does not match the model card's")
    if problems:
        raise UserInputError(f"{model_folder}: the model folder does not match its model card", problems)
    return card


def model_member_folder(card: Mapping) -> str:
    """``<dataset>/<model>``: the folder every member of the card's archive lies in."""
    folders = {str(PurePosixPath(name).parents[-3]) for name in card["files"] if len(PurePosixPath(name).parts) > 2}
    if len(folders) != 1:
        raise UserInputError(f"the model card lists files of {len(folders)} model folders, expected one: {folders}")
    return folders.pop()


def install_model_archive(zip_path: str | Path, results_dir: str | Path) -> tuple[Path, dict]:
    """Install an archive into nnU-Net's results folder ``results_dir``: check it (:func:`read_model_card`),
    extract it into a temporary folder there, load every checkpoint without running code (:func:`load_checkpoint`),
    and only then move the model folder into place. Returns the model folder and its card. A model folder that is
    already there is not replaced."""
    card = read_model_card(zip_path)
    results_dir = Path(results_dir)
    model = model_member_folder(card)
    destination = results_dir / model
    if destination.exists():
        raise UserInputError(
            f"{destination}: a model is already installed there; remove it first or install into another folder"
        )
    results_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".install-partial-", dir=results_dir))
    try:
        _extract_checked(zip_path, staging)
        for checkpoint in sorted((staging / model).glob("fold_*/*.pth")):
            load_checkpoint(checkpoint)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / model, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination, card


# ---------------------------------------------------------------------------------------------- checkpoints
def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint loaded with ``weights_only=True``, allowing only the types nnU-Net's checkpoints hold
    (:data:`CHECKPOINT_TYPES`); a clear error naming the file when it holds anything else."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(CHECKPOINT_TYPES):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()
        raise UserInputError(
            f"{path}: the checkpoint holds more than an nnU-Net checkpoint's weights and records, and is refused "
            f"(loading it would run code from the file){': ' + reason[-1] if reason else ''}"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise UserInputError(f"{path}: the checkpoint cannot be read (corrupt or truncated: {err})") from err
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise UserInputError(f"{path}: not an nnU-Net checkpoint (no network_weights)")
    return checkpoint
