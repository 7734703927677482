"""Predicting a split with the multi-task predictor: masks on the input's grid plus class probabilities."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pancreas_mtl.inference.predictor import MultiTaskPredictor
from pancreas_mtl.nnunet.environment import register_trainers
from pancreas_mtl.nnunet.training import resolve_device

log = logging.getLogger(__name__)

IMAGE_SUFFIX = "_0000.nii.gz"
PROBABILITY_COLUMNS = ["prob_0", "prob_1", "prob_2"]


@dataclass
class InferenceSettings:
    tile_step_size: float = 0.5
    mirror_axes: tuple[int, ...] | None = ()  # () none, None all the model allows
    tile_batch_size: int = 1
    channels_last: bool = False
    device: str = "auto"
    preprocessing_workers: int = 2
    export_workers: int = 2

    @classmethod
    def from_config(cls, values: dict) -> "InferenceSettings":
        values = dict(values)
        if values.get("mirror_axes") is not None:
            values["mirror_axes"] = tuple(values["mirror_axes"])
        return cls(**values)

    def torch_device(self) -> torch.device:
        return torch.device(resolve_device(self.device))


def split_images(case_table: str | Path, raw_dataset: str | Path, split: str) -> list[Path]:
    """The images of one split (validation, test) listed by the conversion's case table."""
    cases = pd.read_csv(case_table, dtype=str)
    return [Path(raw_dataset) / image for image in cases.loc[cases["split"] == split, "image"]]


def case_id_of_image(image: str | Path) -> str:
    name = Path(image).name
    if not name.endswith(IMAGE_SUFFIX):
        raise ValueError(f"{image}: an nnU-Net input image must end with {IMAGE_SUFFIX}")
    return name[: -len(IMAGE_SUFFIX)]


def build_predictor(
    model_folder: str | Path, folds: list[int], checkpoint_name: str, settings: InferenceSettings
) -> MultiTaskPredictor:
    """Load the trained multi-task model once (it stays resident for every case predicted with it)."""
    register_trainers()
    device = settings.torch_device()
    predictor = MultiTaskPredictor(
        tile_step_size=settings.tile_step_size,
        mirror_axes=settings.mirror_axes,
        tile_batch_size=settings.tile_batch_size,
        channels_last=settings.channels_last,
        device=device,
    )
    predictor.initialize_from_trained_model_folder(str(model_folder), tuple(folds), checkpoint_name)
    return predictor


def predict_images(
    predictor: MultiTaskPredictor, images: list[Path], output_dir: str | Path, settings: InferenceSettings
) -> pd.DataFrame:
    """Write ``{case_id}.nii.gz`` per image into output_dir; return the class probabilities per case."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    case_ids = [case_id_of_image(image) for image in images]
    predictor.class_probabilities.clear()
    start = time.perf_counter()
    predictor.predict_files(
        [str(image) for image in images],
        [str(output_dir / case_id) for case_id in case_ids],
        preprocessing_workers=settings.preprocessing_workers,
        export_workers=settings.export_workers,
    )
    log.info("predicted %d case(s) in %.1f s", len(images), time.perf_counter() - start)
    missing = [c for c in case_ids if c not in predictor.class_probabilities]
    if missing:
        raise RuntimeError(f"no class probabilities for: {', '.join(missing)}")
    return class_probability_table({c: predictor.class_probabilities[c] for c in case_ids})


def class_probability_table(probabilities: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = []
    for case_id in sorted(probabilities):
        p = np.asarray(probabilities[case_id], dtype=float)
        rows.append({"case_id": case_id, **dict(zip(PROBABILITY_COLUMNS, p)), "predicted_subtype": int(p.argmax())})
    return pd.DataFrame(rows, columns=["case_id", *PROBABILITY_COLUMNS, "predicted_subtype"])
