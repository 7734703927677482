"""The whole installed stack imports together, and nnU-Net finds our trainers by name."""

import os
import subprocess
import sys

from pancreas_mtl.nnunet.environment import TRAINER_DIR

STACK = """
import torch, torchvision, nnunetv2, snakemake, wandb, SimpleITK, nibabel, pandas, matplotlib, monai, sklearn
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncM,
)
from monai.metrics import DiceMetric, compute_hausdorff_distance, compute_surface_dice
import pancreas_mtl
print("ok", torch.__version__, torchvision.__version__)
"""

# nnU-Net's trainer lookup imports every trainer module it ships (Primus: timm -> torchvision) before it
# searches nnUNet_extTrainer: a broken torchvision breaks every custom trainer here.
LOOKUP = """
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
for name in ["nnUNetTrainerPancreasSeg", "nnUNetTrainerPancreasMultiTask", "nnUNetTrainerPancreasMultiTaskGlobalPool"]:
    cls = recursive_find_trainer_class_by_name(name)
    print("found", cls.__name__)
"""


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


def test_whole_stack_imports_in_a_fresh_interpreter():
    result = run_python(STACK)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok 2.14.1")


def test_nnunet_finds_our_trainers_through_nnunet_ext_trainer():
    result = run_python(LOOKUP, nnUNet_extTrainer=str(TRAINER_DIR))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    found = [line for line in result.stdout.splitlines() if line.startswith("found ")]
    assert len(found) == 3, result.stdout[-2000:]
