from pathlib import Path

from pancreas_mtl.nnunet.environment import NnunetFolders
from pancreas_mtl.nnunet.planning import (
    add_configuration,
    derive_small_configuration,
    install_splits,
    load_planned_configuration,
    plan_and_preprocess,
)
from pancreas_mtl.script_logging import run_logged


def main():
    params = snakemake.params
    preprocessed = Path(snakemake.output.preprocessed)
    plan_and_preprocess(
        NnunetFolders.under(preprocessed.parents[1]),
        params.dataset_id,
        planner=params.planner,
        n_processes=snakemake.threads,
    )
    plans_file = preprocessed / f"{params.plans_name}.json"
    cpu = dict(params.cpu_configuration)
    name = cpu.pop("name")
    add_configuration(
        plans_file, name, derive_small_configuration(load_planned_configuration(plans_file), **cpu)
    )
    install_splits(snakemake.input.splits, preprocessed)


run_logged(main, snakemake.log[0])
