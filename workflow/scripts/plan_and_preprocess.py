from pancreas_mtl.nnunet.environment import NnunetFolders
from pancreas_mtl.nnunet.planning import plan_dataset
from pancreas_mtl.script_logging import run_logged


def main():
    params = snakemake.params
    plan_dataset(
        NnunetFolders.under(params.nnunet_root),
        snakemake.wildcards.dataset,
        planner=params.planner,
        plans_name=params.plans_name,
        cpu_configuration=params.cpu_configuration,
        splits_json=snakemake.input.splits,
        n_processes=snakemake.threads,
        configuration=params.configuration,
        num_gpus=params.num_gpus,
        batch_size_per_gpu=params.batch_size_per_gpu,
    )


run_logged(main, snakemake.log[0])
