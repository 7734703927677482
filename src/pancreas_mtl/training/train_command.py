"""Running one training stage through nnU-Net's own ``nnUNetv2_train`` command."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from pancreas_mtl.nnunet.environment import NnunetFolders, run_nnunet_command
from pancreas_mtl.runtime import resolve_device
from pancreas_mtl.training.settings import SETTINGS_ENV, TrainingSettings

log = logging.getLogger(__name__)


def wandb_environment(enabled: bool, mode: str, project: str) -> dict[str, str]:
    """nnU-Net's built-in W&B logger, offline unless asked otherwise (offline never touches the network).

    nnU-Net passes ``nnUNet_wandb_mode`` to ``wandb.init(mode=...)``, which outranks ``WANDB_MODE``: the mode is set
    here once."""
    if not enabled:
        return {"nnUNet_wandb_enabled": "0"}
    return {
        "nnUNet_wandb_enabled": "1",
        "nnUNet_wandb_mode": mode,
        "nnUNet_wandb_project": project,
        "WANDB_SILENT": "true",
    }


@dataclass(frozen=True)
class ModelFold:
    """One fold of one nnU-Net model, the way ``nnUNetv2_train`` names it."""

    dataset_id: int
    configuration: str
    fold: int | str
    trainer: str
    plans_name: str

    def train_arguments(self) -> list[str]:
        return [str(self.dataset_id), self.configuration, str(self.fold), "-tr", self.trainer, "-p", self.plans_name]


def augmentation_workers_per_gpu(setting: int | str, threads: int, num_gpus: int) -> int:
    """nnU-Net's augmentation workers of each training process (``nnUNet_n_proc_DA``, read by every DDP rank):
    the setting, or with ``auto`` the job's threads shared over its GPUs (at least 1)."""
    if setting != "auto":
        return int(setting)
    return max(1, threads // max(1, num_gpus))


def train_stage(
    folders: NnunetFolders,
    model: ModelFold,
    settings: TrainingSettings,
    settings_file: str | Path,
    device: str,
    num_gpus: int,
    data_augmentation_workers: int,
    wandb: dict,
) -> float:
    """Train (or resume: ``--c`` continues from the latest checkpoint) one stage in its work folder under
    ``folders.training``; returns seconds taken. nnU-Net's final validation is left to :func:`validate_stage`.

    ``data_augmentation_workers`` is per training process (per GPU under DDP). The stage's ``compile`` setting
    ``auto`` becomes on for CUDA, off elsewhere, as nnU-Net decides it. On SIGTERM the trainer writes its
    checkpoint and stops (:class:`~pancreas_mtl.runtime.CommandFailed`, exit code
    ``STOPPED_EXIT_CODE``); this process waits for it."""
    device = resolve_device(device)
    if settings.compile == "auto":
        settings = replace(settings, compile=device == "cuda")
    settings = replace(settings, final_validation=False)
    return _run_train_command(
        folders.for_training(),
        model,
        ["--c"],
        settings,
        settings_file,
        device,
        num_gpus,
        data_augmentation_workers,
        wandb,
        "training",
        graceful_stop=True,
    )


def validate_stage(
    folders: NnunetFolders,
    model: ModelFold,
    settings: TrainingSettings,
    settings_file: str | Path,
    device: str,
    num_gpus: int,
    workers: int,
) -> float:
    """nnU-Net's final validation (``nnUNetv2_train --val``) of a published model in ``folders.results``: it reads
    checkpoint_final.pth and writes ``fold_N/validation/`` beside it, uncompiled and without W&B."""
    settings = replace(settings, compile=False, final_validation=True)
    return _run_train_command(
        folders,
        model,
        ["--val"],
        settings,
        settings_file,
        resolve_device(device),
        num_gpus,
        workers,
        {"enabled": False, "mode": "offline", "project": ""},
        "final validation",
        graceful_stop=False,
    )


def _run_train_command(
    folders: NnunetFolders,
    model: ModelFold,
    mode_args: list[str],
    settings: TrainingSettings,
    settings_file: str | Path,
    device: str,
    num_gpus: int,
    workers: int,
    wandb: dict,
    what: str,
    graceful_stop: bool,
) -> float:
    settings.write(settings_file)
    args = ["nnUNetv2_train", *model.train_arguments(), "-device", device, *mode_args]
    if num_gpus > 1:
        args += ["-num_gpus", str(num_gpus)]
    extra = {
        SETTINGS_ENV: str(Path(settings_file).resolve()),
        "nnUNet_n_proc_DA": str(workers),
        # nnU-Net's final validation otherwise opens 8 export processes (about 1 GB each) whatever the job's size.
        "nnUNet_def_n_proc": str(workers),
        # The trainers compile by their settings; nnU-Net's predictors compile what they are given when this is
        # set, so it stays off: inference inside training runs on the uncompiled network.
        "nnUNet_compile": "0",
        **wandb_environment(**wandb),
    }
    start = time.perf_counter()
    run_nnunet_command(args, folders.environment(**extra), f"nnUNetv2_train {model.trainer}", graceful_stop)
    seconds = time.perf_counter() - start
    log.info(
        "%s of %s fold %s on %s (%d GPU(s), %d workers each, compile %s) took %.1f s",
        what,
        model.trainer,
        model.fold,
        device,
        num_gpus,
        workers,
        settings.compile,
        seconds,
    )
    return seconds


def wandb_run_folders(fold_folder: str | Path) -> list[Path]:
    """Offline W&B runs nnU-Net's logger wrote under a fold folder (``wandb sync`` uploads them)."""
    return sorted(p for p in (Path(fold_folder) / "wandb").glob("offline-run-*") if p.is_dir())
