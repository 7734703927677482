"""Training hyperparameters handed from the workflow config to nnU-Net trainers started by nnUNetv2_train.

``nnUNetv2_train`` constructs trainers itself, so the settings travel as a JSON file named by the
environment variable ``PANCREAS_MTL_TRAINING_SETTINGS``. Everything that changes the network's shape is a
class attribute of the trainer instead, so that ``nnUNetv2_predict`` rebuilds the same network without it.

The defaults live in one place, the config schema (``workflow/schemas/config.schema.yaml``): settings are
built from a schema-validated config (:func:`stage_settings`), and a field missing there is an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

SETTINGS_ENV = "PANCREAS_MTL_TRAINING_SETTINGS"
STAGES = ("stage1", "stage2")
# Multi-task settings that only stage 2 has in the config; stage 1 runs without them.
STAGE2_ONLY = (
    "head_lr_factor",
    "head_dropout",
    "classification_loss",
    "focal_gamma",
    "class_weighting",
    "classification_loss_weight",
    "classification_warmup_epochs",
    "min_lesion_voxels_for_subtype",
)


@dataclass
class TrainingSettings:
    num_epochs: int
    iterations_per_epoch: int
    val_iterations_per_epoch: int
    initial_lr: float
    batch_size_cap: int | None
    # Probability that a training patch is forced to hold foreground (nnU-Net's probabilistic oversampling).
    oversample_foreground_percent: float
    # Share of the forced-foreground patches centred on the lesion (the others: pancreas or lesion at random).
    lesion_centred_share: float
    # Full-volume validation (sliding window over every validation case) for model selection.
    full_validation_every: int
    full_validation_tile_step: float
    full_validation_mirroring: bool
    checkpoint_every: int
    # torch.compile of the training network: True/False, or "auto" for nnU-Net's choice (CUDA only); the train
    # command resolves "auto" for the job's device.
    compile: bool | str
    # From the training section: torch's seed (weights, dropout) and the data sampling's (crops, augmentation).
    seed: int
    sampling_seed: int
    # Lesion-presence prior in the full-volume validation: its relative threshold, None when switched off.
    lesion_prior_threshold: float | None = None
    # nnU-Net's final validation at the end of nnUNetv2_train (its default). The workflow runs it as a step of its
    # own (``nnUNetv2_train --val``), so that its failure never costs the finished weights.
    final_validation: bool = True
    case_table: str | None = None
    # Stage 1 only: "sgd" (nnU-Net's) or "adamw" (stage 2 always trains with AdamW, two parameter groups).
    optimizer: str | None = None
    # Stage 2 only (None in stage 1).
    stage1_checkpoint: str | None = None
    head_lr_factor: float | None = None
    head_dropout: float | None = None
    classification_loss: str | None = None  # "ce" or "focal"
    focal_gamma: float | None = None
    class_weighting: bool | None = None
    classification_loss_weight: float | None = None
    classification_warmup_epochs: int | None = None
    min_lesion_voxels_for_subtype: int | None = None

    def __post_init__(self):
        if self.optimizer not in (None, "sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {self.optimizer!r}")
        if self.compile not in (True, False, "auto"):
            raise ValueError(f"compile must be true, false or 'auto', not {self.compile!r}")
        if self.classification_loss not in (None, "ce", "focal"):
            raise ValueError(f"classification_loss must be 'ce' or 'focal', not {self.classification_loss!r}")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_environment(cls, required: bool = True) -> "TrainingSettings | None":
        path = os.environ.get(SETTINGS_ENV)
        if not path:
            if required:
                raise RuntimeError(
                    f"{SETTINGS_ENV} is not set: the pancreas_mtl trainers take their settings from the JSON file it "
                    "names (the workflow's training rules write it; see pancreas_mtl.training.settings)"
                )
            return None
        return cls.from_dict(json.loads(Path(path).read_text()))

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


def stage_settings(training_config: dict, stage: str, **extra) -> TrainingSettings:
    """The settings of one stage from the schema-validated ``training`` config section (its stage block and its
    seeds), plus ``extra`` (``case_table``, ``stage1_checkpoint``, ``lesion_prior_threshold``)."""
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r}; stages: {', '.join(STAGES)}")
    seed = training_config["seed"]
    sampling_seed = training_config["sampling_seed"]
    seeds = {"seed": seed, "sampling_seed": seed if sampling_seed is None else sampling_seed}
    # which trainer class runs (stage 1's "trainer") is the trainer's name, not one of its settings
    block = {key: value for key, value in training_config[stage].items() if key != "trainer"}
    return TrainingSettings.from_dict({**block, **seeds, **extra})
