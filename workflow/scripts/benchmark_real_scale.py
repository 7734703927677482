from pathlib import Path

from pancreas_mtl.inference.real_scale import run_real_scale_benchmark
from pancreas_mtl.inference.run import InferenceSettings
from pancreas_mtl.script_logging import run_logged


def main():
    params = snakemake.params
    run_real_scale_benchmark(
        Path(snakemake.input.quiz_dir),
        Path(snakemake.output.summary).parent,
        params.dataset_id,
        params.plans_name,
        params.planner,
        InferenceSettings.from_config(params.inference),
        max_cases=params.benchmark["real_scale_max_cases"],
        repeats=1,
        n_processes=snakemake.threads,
    )


if __name__ == "__main__":
    run_logged(main, snakemake.log[0])
