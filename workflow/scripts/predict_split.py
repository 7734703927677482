from pathlib import Path

from pancreas_mtl.inference.run import InferenceSettings, build_predictor, predict_images, split_images
from pancreas_mtl.script_logging import run_logged


def main():
    params = snakemake.params
    images = split_images(snakemake.input.case_table, snakemake.input.raw_dataset, snakemake.wildcards.split)
    settings = InferenceSettings.from_config(params.inference)
    model_folder = Path(snakemake.input.models[0]).parents[1]
    predictor = build_predictor(model_folder, params.folds, params.checkpoint, settings)
    out_dir = Path(snakemake.output.predictions)
    try:
        table = predict_images(predictor, images, out_dir, settings)
    finally:
        predictor.close()
    table.to_csv(out_dir / "class_probabilities.csv", index=False)


# nnU-Net's preprocessing and export workers are spawned processes that import this file again.
if __name__ == "__main__":
    run_logged(main, snakemake.log[0])
