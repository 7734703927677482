from pathlib import Path

from pancreas_mtl.benchmarks.inference import benchmark_split
from pancreas_mtl.inference.run import InferenceSettings
from pancreas_mtl.script_logging import run_logged


def main():
    params = snakemake.params
    benchmark_split(
        params.model_folder,
        params.folds,
        params.checkpoint,
        snakemake.input.cases,
        snakemake.input.images,
        params.split,
        params.max_cases,
        Path(snakemake.output.summary).parent,
        InferenceSettings.from_config(params.inference, snakemake.threads),
        repeats=params.repeats,
        setting=params.setting,
        with_agreement=params.with_agreement,
        note=params.note,
    )


if __name__ == "__main__":
    run_logged(main, snakemake.log[0])
