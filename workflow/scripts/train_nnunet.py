import logging
from pathlib import Path

from pancreas_mtl.model.training_settings import CHECKPOINT_FILES, TrainingSettings
from pancreas_mtl.nnunet.environment import NnunetFolders
from pancreas_mtl.nnunet.training import train_stage, wandb_run_folders
from pancreas_mtl.script_logging import run_logged


def main():
    params = snakemake.params
    training = params.training
    settings = TrainingSettings.from_dict(
        {**params.settings, "case_table": str(Path(snakemake.input.case_table).resolve())}
    )
    if params.stage == "stage2":
        stage1_folder = Path(snakemake.input.stage1).parent
        settings.stage1_checkpoint = str((stage1_folder / CHECKPOINT_FILES[training["stage2_init"]]).resolve())
    fold_folder = Path(snakemake.output.checkpoint).parent
    train_stage(
        NnunetFolders.under(Path(snakemake.input.preprocessed).parents[1]),
        params.dataset_id,
        params.configuration,
        snakemake.wildcards.fold,
        params.trainer,
        params.plans_name,
        settings,
        fold_folder.parent / f"training_settings_{params.stage}_fold{snakemake.wildcards.fold}.json",
        device=training["device"],
        num_gpus=training["num_gpus"],
        data_augmentation_workers=snakemake.threads,
        wandb=params.wandb,
    )
    for run in wandb_run_folders(fold_folder):
        logging.getLogger("pancreas_mtl").info("W&B offline run: %s (upload later with: wandb sync %s)", run, run)


run_logged(main, snakemake.log[0])
