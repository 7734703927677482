"""A training's work folder: where nnU-Net trains a fold, outside every output Snakemake may delete.

Snakemake removes a job's declared outputs before the job runs and again when it fails (a retry, a rerun after
a time limit, ``--rerun-incomplete``). A fold therefore trains in nnU-Net's output folder under the *training*
root (``results/nnunet/training/<dataset>/<trainer__plans__configuration>/fold_N``), which no rule declares:
``checkpoint_latest.pth``, the best checkpoints, nnU-Net's logs and one log per attempt stay there through every
interruption. Only when a training has finished are its checkpoints published into the model folder under the
*trained* root, the rule's declared outputs (:func:`publish`), so they appear last and all at once.

A work folder belongs to one training: its identity (trainer, plans, configuration, fold, the settings and the
digests of the inputs it reads) is recorded in it. A rerun with the same identity resumes (or, finished,
publishes again without training); a rerun with another one (a changed setting, re-preprocessed data, a new
stage-1 model) starts afresh and keeps the old folder beside it, renamed (:func:`prepare`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pancreas_mtl.inference.model_archive import sha256_file
from pancreas_mtl.training.settings import TrainingSettings

log = logging.getLogger(__name__)

# nnU-Net's checkpoints, in the order its ``--c`` resumes from them (nnunetv2.run.run_training).
FINAL_CHECKPOINT = "checkpoint_final.pth"
LATEST_CHECKPOINT = "checkpoint_latest.pth"
NNUNET_BEST_CHECKPOINT = "checkpoint_best.pth"  # nnU-Net's own (EMA pseudo-Dice); the workflow does not use it
# The checkpoint_latest.pth a new one replaced (kept as the fallback when the new one cannot be read).
PREVIOUS_CHECKPOINT = "checkpoint_latest.previous.pth"
IDENTITY_FILE = "training_identity.json"
ATTEMPTS_FOLDER = "attempts"
# Written by a trainer that stopped on a signal (what, when, and the epoch its checkpoint_latest.pth resumes at).
STOP_RECORD = "training_stopped.json"
# Exit code of a training that stopped on a signal after writing its checkpoint (EX_TEMPFAIL: try again).
STOPPED_EXIT_CODE = 75
# Settings that may differ between attempts of one training: they change how it runs, not what it learns.
RUN_ONLY_SETTINGS = ("compile", "final_validation")
# Settings naming files: the identity holds the digests of their contents instead of their paths.
FILE_SETTINGS = ("case_table", "stage1_checkpoint")


def saved_epoch(path: str | Path) -> int | None:
    """The epoch a checkpoint resumes at (nnU-Net's ``current_epoch``); None when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["current_epoch"])
    except Exception:  # truncated or corrupt: torch raises several kinds
        return None


def training_identity(
    settings: TrainingSettings,
    *,
    trainer: str,
    plans_name: str,
    configuration: str,
    fold: int | str,
    inputs: dict[str, str | Path],
) -> dict:
    """What makes two attempts the same training: everything but the run-only settings, with file contents
    (``inputs`` and the files the settings name) by digest."""
    values = asdict(settings)
    files = {name: path for name, path in inputs.items()}
    for name in FILE_SETTINGS:
        if values.get(name) is not None:
            files[name] = values[name]
        values.pop(name, None)
    for name in RUN_ONLY_SETTINGS:
        values.pop(name, None)
    return {
        "trainer": trainer,
        "plans": plans_name,
        "configuration": configuration,
        "fold": str(fold),
        "settings": values,
        "inputs": {name: sha256_file(path) for name, path in sorted(files.items())},
    }


def identity_differences(old: dict, new: dict) -> list[str]:
    """The keys (``settings.num_epochs``, ``inputs.plans``...) in which two identities differ."""
    differences = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            differences.append(key)
    return differences


@dataclass(frozen=True)
class ResumePoint:
    checkpoint: str | None  # the file nnU-Net's --c loads; None: a fresh start
    epoch: int | None  # the epoch it resumes at; None when unreadable

    @property
    def finished(self) -> bool:
        return self.checkpoint == FINAL_CHECKPOINT and self.epoch is not None

    def describe(self) -> str:
        if self.checkpoint is None:
            return "a fresh start (no checkpoint yet)"
        if self.epoch is None:
            return f"{self.checkpoint}, which cannot be read (the trainer falls back to an earlier checkpoint)"
        if self.finished:
            return f"{self.checkpoint}: the training finished ({self.epoch} epochs), nothing left to train"
        return f"{self.checkpoint}, at epoch {self.epoch}"


def resume_point(fold_folder: str | Path) -> ResumePoint:
    """Where ``nnUNetv2_train --c`` resumes in this folder, in nnU-Net's order: final, latest, nnU-Net's best."""
    for name in (FINAL_CHECKPOINT, LATEST_CHECKPOINT, NNUNET_BEST_CHECKPOINT):
        path = Path(fold_folder) / name
        if path.is_file():
            return ResumePoint(name, saved_epoch(path))
    return ResumePoint(None, 0)


def prepare(fold_folder: str | Path, identity: dict) -> Path | None:
    """Make ``fold_folder`` the work folder of the training ``identity``: adopted as it is when it holds the same
    training (or nothing), else renamed aside (returned) so that the training starts afresh."""
    fold_folder = Path(fold_folder)
    identity_file = fold_folder / IDENTITY_FILE
    moved = None
    if identity_file.is_file():
        recorded = json.loads(identity_file.read_text())
        differences = identity_differences(recorded, identity)
        if differences:
            moved = fold_folder.with_name(f"{fold_folder.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
            fold_folder.rename(moved)
            log.warning(
                "the work folder %s held another training (it differs in %s): kept as %s (delete it when it is no "
                "longer needed); this one starts afresh",
                fold_folder,
                ", ".join(differences),
                moved,
            )
    elif fold_folder.is_dir() and any(fold_folder.iterdir()):
        # written before identities were recorded: nothing says which training it was, so it is not resumed
        moved = fold_folder.with_name(f"{fold_folder.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
        fold_folder.rename(moved)
        log.warning(
            "the work folder %s has no %s: kept as %s; this training starts afresh", fold_folder, IDENTITY_FILE, moved
        )
    fold_folder.mkdir(parents=True, exist_ok=True)
    identity_file.write_text(json.dumps(identity, indent=2))
    return moved


# ------------------------------------------------------------------------------------------------ attempts
def attempt_logs(fold_folder: str | Path) -> list[Path]:
    """The logs of the earlier attempts of this training, oldest first."""
    return sorted((Path(fold_folder) / ATTEMPTS_FOLDER).glob("attempt_*.log"))


def begin_attempt(fold_folder: str | Path, rule_log: str | Path | None) -> tuple[int, Path]:
    """Number this attempt, copy the earlier attempts' logs into the rule's log (Snakemake deleted it before the
    job), and add this attempt's own log file in the work folder to the logging. Returns (number, its log)."""
    earlier = attempt_logs(fold_folder)
    number = len(earlier) + 1
    attempt_log = Path(fold_folder) / ATTEMPTS_FOLDER / f"attempt_{number:02d}.log"
    attempt_log.parent.mkdir(parents=True, exist_ok=True)
    if rule_log is not None and earlier:
        with open(rule_log, "a") as out:
            for path in earlier:
                out.write(f"===== {path.stem.replace('_', ' ')} of this training ({path}) =====\n")
                out.write(path.read_text())
            out.write(f"===== attempt {number} =====\n")
    handler = logging.FileHandler(attempt_log, mode="a")
    root = logging.getLogger()
    if root.handlers:
        handler.setFormatter(root.handlers[0].formatter)
    root.addHandler(handler)
    where = socket.gethostname() + (f", SLURM job {os.environ['SLURM_JOB_ID']}" if "SLURM_JOB_ID" in os.environ else "")
    log.info("attempt %d of the training in %s (%s)", number, fold_folder, where)
    return number, attempt_log


# ------------------------------------------------------------------------------------------------ stopping
def write_stop_record(fold_folder: str | Path, signal_name: str, epoch: int) -> Path:
    path = Path(fold_folder) / STOP_RECORD
    record = {
        "signal": signal_name,
        "epoch": epoch,
        "checkpoint": LATEST_CHECKPOINT,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path.write_text(json.dumps(record, indent=2))
    return path


def read_stop_record(fold_folder: str | Path) -> dict | None:
    path = Path(fold_folder) / STOP_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def clear_stop_record(fold_folder: str | Path) -> None:
    (Path(fold_folder) / STOP_RECORD).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ publishing
def publish(fold_folder: str | Path, model_fold_folder: str | Path, names: list[str]) -> list[Path]:
    """The finished training's checkpoints ``names``, linked (copied across filesystems) into the model folder,
    each renamed into place and stamped now (so that the rule's outputs are newer than its inputs)."""
    fold_folder, model_fold_folder = Path(fold_folder), Path(model_fold_folder)
    missing = [name for name in names if not (fold_folder / name).is_file()]
    if missing:
        raise RuntimeError(f"the finished training in {fold_folder} has no {', '.join(missing)}")
    model_fold_folder.mkdir(parents=True, exist_ok=True)
    published = []
    for name in names:
        source, target = fold_folder / name, model_fold_folder / name
        staged = target.with_name(f"{name}.publishing")
        staged.unlink(missing_ok=True)
        try:
            os.link(source, staged)
        except OSError:
            shutil.copy2(source, staged)
        os.replace(staged, target)
        os.utime(target)
        published.append(target)
    log.info("published %s from %s into %s", ", ".join(names), fold_folder, model_fold_folder)
    return published
