import os
import sys
from pathlib import Path

# The workflow's Python package lives in src/; rules run in conda envs or the project venv,
# so put it on the path of every job (and of this process) instead of installing it into each env.
SRC_DIR = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC_DIR))
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        p for p in (str(SRC_DIR), os.environ.get("PYTHONPATH")) if p
    )
)

from snakemake.settings.types import DeploymentMethod

from pancreas_mtl.benchmarks.learning import head_commit_or_none  # noqa: E402
from pancreas_mtl.config import check_config  # noqa: E402
from pancreas_mtl.data.folder_check import folder_plan  # noqa: E402
from pancreas_mtl.data.folder_check import quiz_counts  # noqa: E402
from pancreas_mtl.data.folder_check import synthetic_counts  # noqa: E402
from pancreas_mtl.errors import UserInputError  # noqa: E402
from pancreas_mtl.config import lesion_prior_threshold  # noqa: E402
from pancreas_mtl.nnunet.environment import dataset_folder_name  # noqa: E402
from pancreas_mtl.nnunet.planning import preprocessed_data_identifier  # noqa: E402
from pancreas_mtl.nnunet.planning import training_configuration_name  # noqa: E402
from pancreas_mtl.nnunet.trainer_names import STAGE1_TRAINERS  # noqa: E402
from pancreas_mtl.nnunet.trainer_names import STAGE2_TRAINERS  # noqa: E402
from pancreas_mtl.training.selection import CHECKPOINT_FILES  # noqa: E402
from pancreas_mtl.training.selection import STAGE1_CHECKPOINTS  # noqa: E402
from pancreas_mtl.training.selection import STAGE2_CHECKPOINTS  # noqa: E402

check_config(
    config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
)

# What the quiz folder can support, before any job runs: its cases by name, refusals and fallbacks.
FOLDER = folder_plan(
    (
        synthetic_counts(config["synthetic"]["counts"])
        if config["data"]["source"] == "synthetic"
        else quiz_counts(config["data"]["quiz_dir"])
    ),
    config,
)
logger.info(FOLDER.counts.table())
for note in FOLDER.notes:
    logger.warning(note)
if FOLDER.problems:
    raise UserInputError(
        "The quiz data cannot support this run; nothing was started", FOLDER.problems
    )

DATASET = dataset_folder_name(
    config["nnunet"]["dataset_id"], config["nnunet"]["dataset_name"]
)
# The real-scale benchmark's cases go through the same conversion and planning rules as a second dataset.
REAL_SCALE_DATASET = dataset_folder_name(
    config["benchmark"]["real_scale_dataset_id"], "RealScale"
)
if config["benchmark"]["real_scale_dataset_id"] == config["nnunet"]["dataset_id"]:
    raise ValueError(
        "benchmark.real_scale_dataset_id must differ from nnunet.dataset_id "
        f"(both are {config['nnunet']['dataset_id']})"
    )
# Whether this run deploys conda environments: the real-CT benchmark's runs of the workflow do the same.
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
NNUNET_ROOT = "results/nnunet"
SYNTHETIC_QUIZ_DIR = "resources/synthetic_quiz"
PLANS_NAME = config["nnunet"]["plans_name"]
# nnU-Net's preprocessed data folder the models train on: 3d_fullres's, which the CPU configuration shares unless
# it has a spacing of its own (nnunet.cpu_configuration.spacing).
PREPROCESSED_DATA = preprocessed_data_identifier(
    PLANS_NAME, config["nnunet"]["configuration"], config["nnunet"]["cpu_configuration"]
)

STAGE1_TRAINER = STAGE1_TRAINERS[config["training"]["stage1"]["trainer"]]
# The checkpoints stage 1's job publishes: nnU-Net's stock trainer selects none the workflow uses (its own
# checkpoint_best follows its EMA pseudo-Dice), so only the last epoch's.
STAGE1_KEPT = (
    STAGE1_CHECKPOINTS
    if config["training"]["stage1"]["trainer"] == "project"
    else ("final",)
)
STAGE2_TRAINER = STAGE2_TRAINERS[config["training"]["head"]]
TRAINED_DATASET = f"{NNUNET_ROOT}/trained/{DATASET}"
# The configuration the models train on (with several GPUs, one inheriting it with a per-GPU batch).
TRAIN_CONFIGURATION = training_configuration_name(
    config["nnunet"]["configuration"], config["training"]["num_gpus"]
)
_PLANS_AND_CONFIGURATION = f"{PLANS_NAME}__{TRAIN_CONFIGURATION}"
STAGE1_MODEL = f"{TRAINED_DATASET}/{STAGE1_TRAINER}__{_PLANS_AND_CONFIGURATION}"
STAGE2_MODEL = f"{TRAINED_DATASET}/{STAGE2_TRAINER}__{_PLANS_AND_CONFIGURATION}"
REAL_SCALE_MODEL = "results/benchmark/real_scale/untrained_model"
FOLDS = config["training"]["folds"]
_n_folds = 1 if config["training"]["split"] == "official" else config["training"]["k"]
if max(FOLDS) >= _n_folds:
    raise ValueError(
        f"training.folds {FOLDS} do not exist with training.split "
        f"{config['training']['split']!r} ({_n_folds} fold(s): 0..{_n_folds - 1})"
    )
# Without a selection split (FOLDER.select_checkpoints, too few training cases) the best checkpoints are chosen on
# training cases: the last epoch's is used instead, as the start-up log says.
INFERENCE_CHECKPOINT = CHECKPOINT_FILES[
    (
        config["training"]["inference_checkpoint"]
        if FOLDER.select_checkpoints
        else "final"
    )
]
STAGE2_INIT_CHECKPOINT = CHECKPOINT_FILES[
    config["training"]["stage2_init"] if FOLDER.select_checkpoints else "final"
]


wildcard_constraints:
    fold=r"\d+",
    split=r"validation|test",
    dataset=r"Dataset\d{3}_[A-Za-z0-9_\-]+",
    model=r"nnUNetTrainer[^/]+",


def raw_dataset(dataset):
    return f"{NNUNET_ROOT}/raw/{dataset}"


def dataset_tables(dataset):
    """The conversion's case table (labelled cases) and splits, and the test images' table, of one dataset."""
    return {
        "case_table": f"results/dataset/{dataset}/case_table.csv",
        "splits": f"results/dataset/{dataset}/splits_final.json",
        "test_cases": f"results/dataset/{dataset}/test_cases.csv",
    }


def test_images(dataset):
    """The converted test images: apart from the raw dataset, which training reads."""
    return f"results/dataset/{dataset}/test_images"


def split_cases(dataset, split):
    """A split's table (``cases``) and the folder its image paths are relative to (``images``)."""
    if split == "test":
        return {
            "cases": dataset_tables(dataset)["test_cases"],
            "images": test_images(dataset),
        }
    return {
        "cases": dataset_tables(dataset)["case_table"],
        "images": raw_dataset(dataset),
    }


def preprocessed(dataset):
    """The files of a planned and preprocessed dataset that later jobs read."""
    folder = f"{NNUNET_ROOT}/preprocessed/{dataset}"
    return {
        "plans": f"{folder}/{PLANS_NAME}.json",
        "dataset_json": f"{folder}/dataset.json",
        "splits": f"{folder}/splits_final.json",
        # Stands for the preprocessed data folder: Snakemake puts a .snakemake_timestamp file into a
        # directory() output, and nnU-Net's dataset-format detection refuses a folder holding one.
        "data": f"{folder}/{PREPROCESSED_DATA}.done",
    }


def model_files(model_folder, folds, checkpoint):
    """What a predictor reads from an nnU-Net model folder."""
    return {
        "checkpoints": expand(f"{model_folder}/fold_{{fold}}/{checkpoint}", fold=folds),
        "plans": f"{model_folder}/plans.json",
        "dataset_json": f"{model_folder}/dataset.json",
    }


def model_folder_of(path, levels=1):
    """The model folder holding a file: plans.json (levels 1) or fold_N/checkpoint (levels 2)."""
    return str(Path(path).parents[levels - 1])


def nnunet_root_of(preprocessed_plans):
    """nnU-Net's root folder (raw/, preprocessed/, trained/) of a preprocessed dataset's plans file."""
    return str(Path(preprocessed_plans).parents[2])


def checkpoint_files(model_folder, names):
    return [f"{model_folder}/fold_{{fold}}/{CHECKPOINT_FILES[n]}" for n in names]


# The trained models by folder name (trainer__plans__configuration), with their stage and trainer.
MODEL_STAGES = {
    Path(STAGE1_MODEL).name: ("stage1", STAGE1_TRAINER),
    Path(STAGE2_MODEL).name: ("stage2", STAGE2_TRAINER),
}
# Segmentation only (training.mode, or auto on a folder of one subtype): stage 1 is the model that predicts, and
# nothing asks for stage 2.
SEGMENTATION_ONLY = FOLDER.segmentation_only
PREDICTION_MODEL = STAGE1_MODEL if SEGMENTATION_ONLY else STAGE2_MODEL
TRAINED_MODELS = [Path(STAGE1_MODEL).name] + (
    [] if SEGMENTATION_ONLY else [Path(STAGE2_MODEL).name]
)


def stage_of_model(model):
    if model not in MODEL_STAGES:
        raise ValueError(
            f"{model} is not a model this workflow trains ({', '.join(MODEL_STAGES)})"
        )
    return MODEL_STAGES[model][0]


def trainer_of_model(model):
    stage_of_model(model)
    return MODEL_STAGES[model][1]


def stage_training(stage):
    """What a stage's training reads of the training section: its own block and the seeds.

    A rule's params, so that a change to any other key (the inference checkpoint, the device) never retrains it;
    the settings of a run and not of a model (device, GPUs, workers, W&B) the scripts read from the config.
    """
    training = config["training"]
    return {
        stage: training[stage],
        "seed": training["seed"],
        "sampling_seed": training["sampling_seed"],
    }


# The full validation that selects the checkpoints applies the lesion-presence prior as the exported predictions
# get it: its threshold (None: off) is a training param; the prior's other settings are not.
LESION_PRIOR_THRESHOLD = lesion_prior_threshold(config["postprocessing"])


def final_validation_summaries():
    """nnU-Net's final validation of every trained fold of each stage the run trains."""
    return expand(
        f"{TRAINED_DATASET}/{{model}}/fold_{{fold}}/validation/summary.json",
        model=TRAINED_MODELS,
        fold=FOLDS,
    )


def quiz_dir(dataset):
    if dataset == REAL_SCALE_DATASET:
        return config["benchmark"]["real_scale_quiz_dir"]
    if config["data"]["source"] == "synthetic":
        return SYNTHETIC_QUIZ_DIR
    return config["data"]["quiz_dir"]


def quiz_files(dataset, splits):
    """The quiz folder's files of some splits, the inputs of their conversion.

    The synthetic folder is a rule's output; a real quiz folder is tracked file by file, so that a new test image
    reruns the test images' conversion and nothing that training reads."""
    if dataset == DATASET and config["data"]["source"] == "synthetic":
        return SYNTHETIC_QUIZ_DIR
    root = Path(quiz_dir(dataset))
    files = [
        str(f) for split in splits for f in sorted((root / split).glob("**/*.nii.gz"))
    ]
    return files or str(root)


def labelled_quiz_files(wildcards):
    return quiz_files(wildcards.dataset, ["train", "validation"])


def test_quiz_files(wildcards):
    return quiz_files(wildcards.dataset, ["test"])


def preprocess_threads():
    return config["resources"]["preprocess_threads"]


def evaluation_outputs():
    """The metrics files; a segmentation-only run has no classification metrics."""
    outputs = {
        "summary": "results/metrics/summary.json",
        "per_case": "results/metrics/segmentation_per_case.csv",
        "segmentation": "results/metrics/segmentation_summary.json",
        "prior_effect": "results/metrics/lesion_prior_effect.csv",
    }
    if not SEGMENTATION_ONLY:
        outputs["classification"] = "results/metrics/classification.json"
    return outputs


def report_figures():
    """The report's figures by output name: (file, caption, category). A segmentation-only run draws those that need
    neither the classification head nor the inference benchmark."""
    figures = {
        "training_curves": (
            "results/report/training_curves.png",
            "training_curves.rst",
            "Training",
        ),
        "dice_distribution": (
            "results/report/dice_distribution.png",
            "dice_distribution.rst",
            "Validation",
        ),
        "overlay_montage": (
            "results/report/overlay_montage.png",
            "overlay_montage.rst",
            "Validation",
        ),
    }
    if not SEGMENTATION_ONLY:
        figures["confusion_matrix"] = (
            "results/report/confusion_matrix.png",
            "confusion_matrix.rst",
            "Validation",
        )
        figures["benchmark"] = (
            "results/benchmark/benchmark.png",
            "benchmark.rst",
            "Inference benchmark",
        )
    return figures


def report_plot_inputs():
    inputs = {
        "stage1_checkpoint": f"{STAGE1_MODEL}/fold_{FOLDS[0]}/checkpoint_final.pth",
        "segmentation_per_case": "results/metrics/segmentation_per_case.csv",
        "case_table": dataset_tables(DATASET)["case_table"],
        "raw_dataset": raw_dataset(DATASET),
        "predictions": "results/predictions/validation",
    }
    if not SEGMENTATION_ONLY:
        inputs.update(
            stage2_checkpoint=f"{STAGE2_MODEL}/fold_{FOLDS[0]}/checkpoint_final.pth",
            classification="results/metrics/classification.json",
            benchmark="results/benchmark/summary.json",
            benchmark_per_case="results/benchmark/per_case.csv",
        )
    return inputs


def all_targets():
    """Everything the main command makes, less what the folder cannot support (FOLDER's fallbacks)."""
    test = (
        ["results/predictions/test"]
        if SEGMENTATION_ONLY
        else ["results/subtype_results.csv", "results/submission.zip"]
    )
    # the report's figures read the metrics (and, multi-task, the inference benchmark)
    validation = [
        "results/metrics/summary.json",
        *(path for path, _, _ in report_figures().values()),
    ]
    return [
        *(test if FOLDER.predict_test else []),
        *(validation if FOLDER.evaluate_validation else []),
        *final_validation_summaries(),
    ]
