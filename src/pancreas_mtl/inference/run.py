"""Predicting a split with the multi-task predictor: masks on the input's grid plus class probabilities (masks alone
with a segmentation model)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pancreas_mtl.data.lesion_prior_record import write_prior_record
from pancreas_mtl.inference.predictor import MultiTaskPredictor
from pancreas_mtl.nnunet.environment import register_trainers
from pancreas_mtl.runtime import resolve_device

log = logging.getLogger(__name__)

IMAGE_SUFFIX = "_0000.nii.gz"


@dataclass
class InferenceSettings:
    """The config's ``inference`` section (its defaults are the schema's)."""

    tile_step_size: float
    mirror_axes: tuple[int, ...] | None  # () none, None all the model allows
    channels_last: bool
    device: str
    preprocessing_workers: int
    export_workers: int
    resample_on_device: bool | str  # "auto": where the device is a GPU

    @classmethod
    def from_config(cls, values: dict, threads: int = 1) -> "InferenceSettings":
        """Settings from the config section; ``auto`` worker counts are sized from the job's ``threads``."""
        values = dict(values)
        if values.get("mirror_axes") is not None:
            values["mirror_axes"] = tuple(values["mirror_axes"])
        for key in ("preprocessing_workers", "export_workers"):
            if values[key] == "auto":
                values[key] = workers_for_threads(threads)
        return cls(**values)

    def torch_device(self) -> torch.device:
        return torch.device(resolve_device(self.device))

    def resamples_on_device(self) -> bool:
        if self.resample_on_device == "auto":
            return self.torch_device().type == "cuda"
        return bool(self.resample_on_device)


def workers_for_threads(threads: int) -> int:
    """Preprocessing (or export) workers for a job of ``threads`` threads: the model's process keeps one thread,
    the two pools share the rest; at least one worker each."""
    return max(1, (int(threads) - 1) // 2)


def case_id_of_image(image: str | Path) -> str:
    name = Path(image).name
    if not name.endswith(IMAGE_SUFFIX):
        raise ValueError(f"{image}: an nnU-Net input image must end with {IMAGE_SUFFIX}")
    return name[: -len(IMAGE_SUFFIX)]


def build_predictor(
    model_folder: str | Path,
    folds: list[int],
    checkpoint_name: str,
    settings: InferenceSettings,
    start_workers: bool = True,
    classification: bool = True,
    untrusted: bool = False,
) -> MultiTaskPredictor:
    """Load the trained model once (it stays resident for every case predicted with it).

    ``start_workers=False`` for a predictor that only computes on preprocessed data (no :meth:`predict_files`).
    ``classification=False`` takes a segmentation model (stage 1) as well; by default the model must have the
    classification head. ``untrusted``: a model from elsewhere, whose checkpoints are loaded without running code
    (:meth:`MultiTaskPredictor.initialize_from_untrusted_model_folder`).
    """
    register_trainers()
    predictor = MultiTaskPredictor(
        tile_step_size=settings.tile_step_size,
        mirror_axes=settings.mirror_axes,
        channels_last=settings.channels_last,
        resample_on_device=settings.resamples_on_device(),
        device=settings.torch_device(),
    )
    try:
        if start_workers:  # they start up (import nnU-Net) while this process loads the weights
            predictor.start_workers(settings.preprocessing_workers, settings.export_workers)
        if untrusted:
            predictor.initialize_from_untrusted_model_folder(model_folder, tuple(folds), checkpoint_name)
        else:
            predictor.initialize_from_trained_model_folder(str(model_folder), tuple(folds), checkpoint_name)
        if classification and not predictor.has_classification_head:
            raise TypeError(
                f"{model_folder}: the model has no classification head; the multi-task predictor needs a model "
                "trained with nnUNetTrainerPancreasMultiTask*"
            )
    except BaseException:
        predictor.close()
        raise
    return predictor


def predict_images(
    predictor: MultiTaskPredictor,
    images: list[Path],
    output_dir: str | Path,
    settings: InferenceSettings,
    lesion_prior_threshold: float | None = None,
    on_case_computed: Callable[[str, dict[str, float]], None] | None = None,
) -> dict[str, np.ndarray]:
    """Write ``{case_id}.nii.gz`` per image into output_dir (with the lesion-presence prior when its threshold is
    given, recorded in ``lesion_prior.json``); return the class probabilities per case, in the images' order
    (none for a model without the classification head). ``on_case_computed``: see
    :meth:`MultiTaskPredictor.predict_files`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    case_ids = [case_id_of_image(image) for image in images]
    predictor.class_probabilities.clear()
    predictor.lesion_prior_changes.clear()
    start = time.perf_counter()
    predictor.predict_files(
        [str(image) for image in images],
        [str(output_dir / case_id) for case_id in case_ids],
        preprocessing_workers=settings.preprocessing_workers,
        export_workers=settings.export_workers,
        lesion_prior_threshold=lesion_prior_threshold,
        on_case_computed=on_case_computed,
    )
    write_prior_record(output_dir, lesion_prior_threshold, predictor.lesion_prior_changes)
    if lesion_prior_threshold is not None:
        log.info(
            "lesion-presence prior (relative threshold %s) added a lesion to %d of %d case(s): %s",
            lesion_prior_threshold,
            len(predictor.lesion_prior_changes),
            len(images),
            ", ".join(sorted(predictor.lesion_prior_changes)) or "none",
        )
    log.info("predicted %d case(s) in %.1f s", len(images), time.perf_counter() - start)
    if not predictor.has_classification_head:
        return {}
    missing = [c for c in case_ids if c not in predictor.class_probabilities]
    if missing:
        raise RuntimeError(f"no class probabilities for: {', '.join(missing)}")
    return {c: predictor.class_probabilities[c] for c in case_ids}
