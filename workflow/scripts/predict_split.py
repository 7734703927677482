from pancreas_mtl.data.case_table import split_images
from pancreas_mtl.data.class_probabilities import write_class_probabilities
from pancreas_mtl.inference.run import InferenceSettings, build_predictor, predict_images
from pancreas_mtl.script_logging import run_logged


def main():
    params = snakemake.params
    images = split_images(snakemake.input.cases, snakemake.input.images, snakemake.wildcards.split)
    settings = InferenceSettings.from_config(params.inference, snakemake.threads)
    # segmentation only: the stage-1 model, which has no classification head, and no class probabilities
    predictor = build_predictor(
        params.model_folder, params.folds, params.checkpoint, settings, classification=params.classification
    )
    try:
        probabilities = predict_images(
            predictor, images, snakemake.output.predictions, settings, params.lesion_prior_threshold
        )
    finally:
        predictor.close()
    if params.classification:
        write_class_probabilities(snakemake.output.predictions, probabilities)


# The predictor's preprocessing and export workers are spawned processes that import this file again.
if __name__ == "__main__":
    run_logged(main, snakemake.log[0])
