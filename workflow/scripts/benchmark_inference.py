from pathlib import Path

from pancreas_mtl.inference.benchmark import run_benchmark
from pancreas_mtl.inference.run import InferenceSettings, split_images
from pancreas_mtl.script_logging import run_logged


def main():
    params = snakemake.params
    images = split_images(snakemake.input.case_table, snakemake.input.raw_dataset, params.benchmark["split"])
    if params.benchmark["max_cases"]:
        images = images[: params.benchmark["max_cases"]]
    run_benchmark(
        Path(snakemake.input.models[0]).parents[1],
        params.folds,
        params.checkpoint,
        images,
        Path(snakemake.output.summary).parent,
        InferenceSettings.from_config(params.inference),
        repeats=params.benchmark["repeats"],
        setting="demo",
        note=f"trained model ({params.checkpoint}), {params.benchmark['split']} cases",
    )


if __name__ == "__main__":
    run_logged(main, snakemake.log[0])
