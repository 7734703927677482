import logging
from pathlib import Path

from pancreas_mtl.nnunet.environment import NnunetFolders
from pancreas_mtl.script_logging import run_logged
from pancreas_mtl.training.job import train_and_publish
from pancreas_mtl.training.settings import stage_settings
from pancreas_mtl.training.train_command import (
    ModelFold,
    augmentation_workers_per_gpu,
    wandb_run_folders,
)


def main():
    params, fold, inputs = snakemake.params, snakemake.wildcards.fold, snakemake.input
    # how this run trains (device, GPUs, workers, W&B), from the config: not params, so that none of it retrains
    training = snakemake.config["training"]
    extra = {
        "case_table": str(Path(inputs.case_table).resolve()),
        # checkpoints are selected on masks post-processed as the exported predictions are
        "lesion_prior_threshold": params.lesion_prior_threshold,
    }
    if params.stage == "stage2":
        extra["stage1_checkpoint"] = str(Path(inputs.stage1_checkpoint).resolve())
    checkpoints = [Path(path) for path in snakemake.output.checkpoints]
    work = train_and_publish(
        NnunetFolders.under(params.nnunet_root),
        checkpoints[0].parent,
        [path.name for path in checkpoints],
        {name: inputs[name] for name in ("plans", "dataset_json", "splits", "data")},
        snakemake.log[0],
        model=ModelFold(params.dataset_id, params.configuration, fold, params.trainer, params.plans_name),
        settings=stage_settings(params.training, params.stage, **extra),
        device=training["device"],
        num_gpus=training["num_gpus"],
        data_augmentation_workers=augmentation_workers_per_gpu(
            training["data_augmentation_workers"], snakemake.threads, training["num_gpus"]
        ),
        wandb=snakemake.config["wandb"],
    )
    for run in wandb_run_folders(work):
        logging.getLogger("pancreas_mtl").info("W&B offline run: %s (upload later with: wandb sync %s)", run, run)


run_logged(main, snakemake.log[0])
