"""Training hyperparameters handed from the workflow config to nnU-Net trainers started by nnUNetv2_train.

``nnUNetv2_train`` constructs trainers itself, so the settings travel as a JSON file named by the
environment variable ``PANCREAS_MTL_TRAINING_SETTINGS``. Everything that changes the network's shape is a
class attribute of the trainer instead, so that ``nnUNetv2_predict`` rebuilds the same network without it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

SETTINGS_ENV = "PANCREAS_MTL_TRAINING_SETTINGS"
# The checkpoints a training keeps, by the name the config uses for them.
CHECKPOINT_FILES = {
    "final": "checkpoint_final.pth",
    "best_combined": "checkpoint_best_combined.pth",
    "best_f1": "checkpoint_best_f1.pth",
}


@dataclass
class TrainingSettings:
    num_epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50
    initial_lr: float = 1e-2
    batch_size_cap: int | None = None
    oversample_foreground_percent: float = 0.33
    # Full-volume validation (sliding window over every validation case) for model selection.
    full_validation_every: int = 10
    full_validation_tile_step: float = 0.5
    full_validation_mirroring: bool = False
    checkpoint_every: int = 10
    case_table: str | None = None
    # Stage 2 only.
    stage1_checkpoint: str | None = None
    head_lr_factor: float = 10.0
    head_dropout: float = 0.3
    classification_loss: str = "ce"  # "ce" or "focal"
    focal_gamma: float = 2.0
    class_weighting: bool = True
    classification_loss_weight: float = 1.0
    classification_warmup_epochs: int = 5

    def __post_init__(self):
        if self.classification_loss not in ("ce", "focal"):
            raise ValueError(f"classification_loss must be 'ce' or 'focal', not {self.classification_loss!r}")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_environment(cls) -> "TrainingSettings":
        path = os.environ.get(SETTINGS_ENV)
        if not path:
            return cls()
        return cls.from_dict(json.loads(Path(path).read_text()))

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))
        return path
