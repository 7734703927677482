from pancreas_mtl.benchmarks.real_scale import make_untrained_model_folder
from pancreas_mtl.script_logging import run_logged


def main():
    make_untrained_model_folder(
        snakemake.input.plans,
        snakemake.input.dataset_json,
        snakemake.params.configuration,
        snakemake.params.model_folder,
        head=snakemake.params.head,
    )


run_logged(main, snakemake.log[0])
