"""What the predictor's background workers run: nnU-Net's preprocessing and export of one case.

Kept in a module of its own that imports no more than these need, since every worker process imports it.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image
from nnunetv2.inference.export_prediction import (
    convert_predicted_logits_to_segmentation_with_correct_shape,
    export_prediction_from_logits,
)

from pancreas_mtl.data.lesion_prior_record import WITHOUT_PRIOR_FOLDER
from pancreas_mtl.inference.lesion_prior import apply_lesion_presence_prior, lesion_output_channel

WORKERS_MODULE = __name__


def timed_in_worker(function, *args):
    """``function(*args)``, the seconds it took and the worker's peak resident memory so far (MiB), measured in the
    worker that ran it (a parent's RUSAGE_CHILDREN does not see workers forked from a server)."""
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def preprocess_case(image: str, plans_manager, configuration_manager, dataset_json) -> tuple[np.ndarray, dict]:
    """nnU-Net's preprocessing of one image, run in a worker process."""
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    data, _, properties = preprocessor.run_case([image], None, plans_manager, configuration_manager, dataset_json)
    return np.ascontiguousarray(data, dtype=np.float32), properties


def export_case(
    logits: np.ndarray,
    properties: dict,
    configuration_manager,
    plans_manager,
    dataset_json: dict,
    output_file_truncated: str,
    lesion_prior_threshold: float | None,
) -> dict:
    """nnU-Net's export of one case (resampling to the input grid, argmax, writing), run in a worker process,
    with the lesion-presence prior between the argmax and the writing when ``lesion_prior_threshold`` is set.

    A mask the prior changed is also written as predicted before it, under ``without_lesion_prior/``.
    Returns the voxels the prior added and the peak lesion probability it started from (0 and nan: unchanged).
    """
    if lesion_prior_threshold is None:
        export_prediction_from_logits(
            logits, properties, configuration_manager, plans_manager, dataset_json, output_file_truncated, False
        )
        return dict(_UNCHANGED)
    label_manager = plans_manager.get_label_manager(dataset_json)
    segmentation, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, plans_manager, configuration_manager, label_manager, properties, return_probabilities=True
    )
    return _write_with_prior(
        segmentation,
        probabilities[lesion_output_channel(label_manager)],
        lesion_prior_threshold,
        lambda labels: labels,
        properties,
        plans_manager,
        dataset_json,
        output_file_truncated,
    )


def export_cropped_labels(
    labels: np.ndarray,
    lesion_probabilities: np.ndarray | None,
    properties: dict,
    plans_manager,
    dataset_json: dict,
    output_file_truncated: str,
    lesion_prior_threshold: float | None,
) -> dict:
    """The rest of nnU-Net's export for labels already resampled to the cropped input's grid (on the device, see
    :mod:`~pancreas_mtl.inference.device_resampling`): the lesion-presence prior when its threshold is set (on the
    crop: outside it nnU-Net's export has no lesion probability), insertion into the full image, transpose back,
    writing. Returns what :func:`export_case` returns."""

    def on_input_grid(cropped: np.ndarray) -> np.ndarray:
        full = np.zeros(properties["shape_before_cropping"], dtype=np.uint8)
        return insert_crop_into_image(full, cropped, properties["bbox_used_for_cropping"]).transpose(
            plans_manager.transpose_backward
        )

    if lesion_prior_threshold is None:
        plans_manager.image_reader_writer_class().write_seg(
            on_input_grid(labels), output_file_truncated + dataset_json["file_ending"], properties
        )
        return dict(_UNCHANGED)
    return _write_with_prior(
        labels,
        lesion_probabilities,
        lesion_prior_threshold,
        on_input_grid,
        properties,
        plans_manager,
        dataset_json,
        output_file_truncated,
    )


_UNCHANGED = {"added_voxels": 0, "peak_probability": float("nan")}


def _write_with_prior(
    labels: np.ndarray,
    lesion_probabilities: np.ndarray,
    threshold: float,
    on_input_grid,
    properties: dict,
    plans_manager,
    dataset_json: dict,
    output_file_truncated: str,
) -> dict:
    """The lesion-presence prior on ``labels``, then the mask written through ``on_input_grid``; a mask it changed
    is also written as predicted before it, under ``without_lesion_prior/``."""
    prior = apply_lesion_presence_prior(labels, lesion_probabilities, relative_threshold=threshold)
    writer = plans_manager.image_reader_writer_class()
    output = Path(output_file_truncated)
    if prior.added_voxels:
        (output.parent / WITHOUT_PRIOR_FOLDER).mkdir(exist_ok=True)
        writer.write_seg(
            on_input_grid(labels),
            str(output.parent / WITHOUT_PRIOR_FOLDER / output.name) + dataset_json["file_ending"],
            properties,
        )
    writer.write_seg(on_input_grid(prior.labels), output_file_truncated + dataset_json["file_ending"], properties)
    return {"added_voxels": prior.added_voxels, "peak_probability": prior.peak_probability}
