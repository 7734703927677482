import logging
from pathlib import Path

from pancreas_mtl.inference.run import lesion_prior_threshold
from pancreas_mtl.nnunet.environment import NnunetFolders
from pancreas_mtl.nnunet.train_command import (
    augmentation_workers_per_gpu,
    train_stage,
    wandb_run_folders,
)
from pancreas_mtl.script_logging import run_logged
from pancreas_mtl.training.settings import stage_settings


def main():
    params, fold = snakemake.params, snakemake.wildcards.fold
    training = params.training
    extra = {
        "case_table": str(Path(snakemake.input.case_table).resolve()),
        # checkpoints are selected on masks post-processed as the exported predictions are
        "lesion_prior_threshold": lesion_prior_threshold(params.postprocessing),
    }
    if params.stage == "stage2":
        extra["stage1_checkpoint"] = str(Path(snakemake.input.stage1_checkpoint).resolve())
    fold_folder = Path(params.model_folder) / f"fold_{fold}"
    train_stage(
        NnunetFolders.under(params.nnunet_root),
        params.dataset_id,
        params.configuration,
        fold,
        params.trainer,
        params.plans_name,
        stage_settings(training, params.stage, **extra),
        Path(params.model_folder) / f"training_settings_{params.stage}_fold{fold}.json",
        device=training["device"],
        num_gpus=training["num_gpus"],
        data_augmentation_workers=augmentation_workers_per_gpu(
            training["data_augmentation_workers"], snakemake.threads, training["num_gpus"]
        ),
        wandb=params.wandb,
    )
    for run in wandb_run_folders(fold_folder):
        logging.getLogger("pancreas_mtl").info("W&B offline run: %s (upload later with: wandb sync %s)", run, run)


run_logged(main, snakemake.log[0])
