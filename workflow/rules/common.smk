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

from pancreas_mtl.config import check_config  # noqa: E402
from pancreas_mtl.model.training_settings import CHECKPOINT_FILES  # noqa: E402

check_config(
    config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
)

DATASET = "Dataset{:03d}_{}".format(
    config["nnunet"]["dataset_id"], config["nnunet"]["dataset_name"]
)
NNUNET_ROOT = "results/nnunet"
RAW_DATASET = f"{NNUNET_ROOT}/raw/{DATASET}"
PREPROCESSED_DATASET = f"{NNUNET_ROOT}/preprocessed/{DATASET}"
SYNTHETIC_QUIZ_DIR = "resources/synthetic_quiz"

STAGE1_TRAINER = "nnUNetTrainerPancreasSeg"
STAGE2_TRAINER = {
    "roi_attention": "nnUNetTrainerPancreasMultiTask",
    "global_pool": "nnUNetTrainerPancreasMultiTaskGlobalPool",
}[config["training"]["head"]]
TRAINED_DATASET = f"{NNUNET_ROOT}/trained/{DATASET}"
_PLANS_AND_CONFIGURATION = (
    f"{config['nnunet']['plans_name']}__{config['nnunet']['configuration']}"
)
STAGE1_FOLDER = f"{STAGE1_TRAINER}__{_PLANS_AND_CONFIGURATION}"
STAGE2_FOLDER = f"{STAGE2_TRAINER}__{_PLANS_AND_CONFIGURATION}"
FOLDS = config["training"]["folds"]
_n_folds = 1 if config["training"]["split"] == "official" else config["training"]["k"]
if max(FOLDS) >= _n_folds:
    raise ValueError(
        f"training.folds {FOLDS} do not exist with training.split "
        f"{config['training']['split']!r} ({_n_folds} fold(s): 0..{_n_folds - 1})"
    )
INFERENCE_CHECKPOINT = CHECKPOINT_FILES[config["training"]["inference_checkpoint"]]


wildcard_constraints:
    fold=r"\d+",
    split=r"validation|test",


def quiz_dir():
    if config["data"]["source"] == "synthetic":
        return SYNTHETIC_QUIZ_DIR
    return config["data"]["quiz_dir"]


def quiz_input():
    """The synthetic folder is a rule's output; a real quiz folder is tracked file by file."""
    if config["data"]["source"] == "synthetic":
        return SYNTHETIC_QUIZ_DIR
    files = sorted(Path(quiz_dir()).glob("**/*.nii.gz"))
    return [str(f) for f in files] or quiz_dir()


def preprocess_threads():
    return config["resources"]["preprocess_threads"]


def stage2_checkpoints():
    return expand(
        f"{TRAINED_DATASET}/{STAGE2_FOLDER}/fold_{{fold}}/checkpoint_final.pth",
        fold=FOLDS,
    )


def all_targets():
    return [
        "results/subtype_results.csv",
        "results/submission.zip",
        "results/metrics/summary.json",
        "results/benchmark/summary.json",
        "results/report/training_curves.png",
        "results/report/overlay_montage.png",
    ]
