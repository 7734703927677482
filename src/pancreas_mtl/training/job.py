"""One training job of the workflow: a fold of one stage, trained in its work folder, published when finished.

Every attempt (the first, a SLURM retry, a rerun after a time limit or a failure) goes the same way:

1. the work folder is checked against this training's identity (:func:`work_folder.prepare`);
2. the attempt gets its own log in the work folder, and the rule's log gets the earlier attempts' logs;
3. a finished training is published again without training; otherwise ``nnUNetv2_train --c`` resumes from the
   checkpoint the folder holds (the log names it and its epoch);
4. a training that stopped on SIGTERM (its checkpoint written) ends the job with :class:`TrainingStopped`;
5. a finished one has its checkpoints published into the model folder: the rule's declared outputs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pancreas_mtl.errors import TrainingStopped
from pancreas_mtl.nnunet.environment import NnunetFolders
from pancreas_mtl.runtime import CommandFailed
from pancreas_mtl.training import work_folder
from pancreas_mtl.training.settings import TrainingSettings
from pancreas_mtl.training.train_command import ModelFold, train_stage

log = logging.getLogger(__name__)


def training_fold_folder(folders: NnunetFolders, model_fold_folder: str | Path) -> Path:
    """The work folder of a model fold folder (``trained/<dataset>/<model>/fold_N`` -> ``training/...``)."""
    model_fold_folder = Path(model_fold_folder)
    relative = model_fold_folder.resolve().relative_to(folders.results.resolve())
    return folders.training / relative


def train_and_publish(
    folders: NnunetFolders,
    model_fold_folder: str | Path,
    checkpoints: list[str],
    inputs: dict[str, str | Path],
    rule_log: str | Path | None,
    *,
    model: ModelFold,
    settings: TrainingSettings,
    device: str,
    num_gpus: int,
    data_augmentation_workers: int,
    wandb: dict,
) -> Path:
    """Train (or resume) one fold in its work folder and publish ``checkpoints`` into ``model_fold_folder``;
    returns the work folder. ``inputs``: the files the training reads, by name, for its identity."""
    fold_folder = training_fold_folder(folders, model_fold_folder)
    identity = work_folder.training_identity(
        settings,
        trainer=model.trainer,
        plans_name=model.plans_name,
        configuration=model.configuration,
        fold=model.fold,
        inputs=inputs,
    )
    work_folder.prepare(fold_folder, identity)
    number, _ = work_folder.begin_attempt(fold_folder, rule_log)
    start = work_folder.resume_point(fold_folder)
    log.info("attempt %d resumes from %s", number, start.describe())
    if not start.finished:
        work_folder.clear_stop_record(fold_folder)
        try:
            train_stage(
                folders,
                model,
                settings,
                fold_folder / "training_settings.json",
                device=device,
                num_gpus=num_gpus,
                data_augmentation_workers=data_augmentation_workers,
                wandb=wandb,
            )
        except CommandFailed as failure:
            stop = work_folder.read_stop_record(fold_folder)
            if stop is None:
                log.error("attempt %d failed: %s", number, failure)
                raise
            message = (
                f"attempt {number} stopped on {stop['signal']} in epoch {stop['epoch']}: "
                f"{fold_folder / stop['checkpoint']} resumes there. Rerun the workflow to continue (a SLURM retry "
                "does so by itself)"
            )
            log.warning("%s", message)
            raise TrainingStopped(message) from failure
    work_folder.publish(fold_folder, model_fold_folder, checkpoints)
    log.info("attempt %d finished the training", number)
    return fold_folder
