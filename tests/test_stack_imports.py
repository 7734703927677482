"""The whole installed stack imports together in one process (guards the torchvision pitfall)."""

import subprocess
import sys

STACK = """
import torch, nnunetv2, snakemake, wandb, SimpleITK, nibabel, pandas, matplotlib, monai
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncM,
)
from monai.metrics import DiceMetric, compute_hausdorff_distance, compute_surface_dice
import pancreas_mtl
print("ok", torch.__version__)
"""


def test_whole_stack_imports_in_a_fresh_interpreter():
    result = subprocess.run([sys.executable, "-c", STACK], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok 2.13.0")


def test_torch_is_the_cpu_pin_or_a_working_build():
    import torch

    assert torch.__version__.split("+")[0] == "2.13.0"
    assert torch.ones(2).sum().item() == 2.0
