"""Entry point for nnU-Net's trainer lookup (nnUNet_extTrainer points at this folder).

nnU-Net imports every module of an nnUNet_extTrainer folder as a top-level module and later drops them
from sys.modules, so this folder holds only this shim; the trainers live in pancreas_mtl.training.trainers.
"""

from pancreas_mtl.training.trainers import (  # noqa: F401
    nnUNetTrainerPancreasMultiTask,
    nnUNetTrainerPancreasMultiTaskGlobalPool,
    nnUNetTrainerPancreasSeg,
    nnUNetTrainerStockBudget,
)
