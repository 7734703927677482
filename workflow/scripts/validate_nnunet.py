from pathlib import Path

from pancreas_mtl.nnunet.environment import NnunetFolders
from pancreas_mtl.script_logging import run_logged
from pancreas_mtl.training.settings import stage_settings
from pancreas_mtl.training.train_command import ModelFold, validate_stage


def main():
    params, inputs = snakemake.params, snakemake.input
    extra = {
        "case_table": str(Path(inputs.case_table).resolve()),
        "lesion_prior_threshold": params.lesion_prior_threshold,
    }
    if params.stage == "stage2":
        extra["stage1_checkpoint"] = str(Path(inputs.stage1_checkpoint).resolve())
    fold_folder = Path(inputs.checkpoint).parent
    validate_stage(
        NnunetFolders.under(params.nnunet_root),
        ModelFold(
            params.dataset_id,
            params.configuration,
            snakemake.wildcards.fold,
            params.trainer,
            params.plans_name,
        ),
        stage_settings(params.training, params.stage, **extra),
        fold_folder / "validation_settings.json",
        device=snakemake.config["training"]["device"],
        num_gpus=snakemake.config["training"]["num_gpus"],
        workers=snakemake.threads,
    )


run_logged(main, snakemake.log[0])
