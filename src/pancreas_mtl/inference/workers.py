"""What the predictor's background workers run: nnU-Net's preprocessing and export of one case.

Kept in a module of its own that imports no more than these need, since every worker process imports it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from nnunetv2.inference.export_prediction import (
    convert_predicted_logits_to_segmentation_with_correct_shape,
    export_prediction_from_logits,
)

from pancreas_mtl.inference.lesion_prior import (
    WITHOUT_PRIOR_FOLDER,
    apply_lesion_presence_prior,
    lesion_output_channel,
)

WORKERS_MODULE = __name__


def timed_in_worker(function, *args):
    """``function(*args)`` and the seconds it took, measured in the worker that ran it."""
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def preprocess_case(image: str, plans_manager, configuration_manager, dataset_json) -> tuple[np.ndarray, dict]:
    """nnU-Net's preprocessing of one image, run in a worker process."""
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    data, _, properties = preprocessor.run_case([image], None, plans_manager, configuration_manager, dataset_json)
    return np.ascontiguousarray(data, dtype=np.float32), properties


def export_case(logits: np.ndarray, properties: dict, configuration_manager, plans_manager, dataset_json: dict,
                output_file_truncated: str, lesion_prior_threshold: float | None) -> dict:
    """nnU-Net's export of one case (resampling to the input grid, argmax, writing), run in a worker process,
    with the lesion-presence prior between the argmax and the writing when ``lesion_prior_threshold`` is set.

    A mask the prior changed is also written as predicted before it, under ``without_lesion_prior/``.
    Returns the voxels the prior added and the peak lesion probability it started from (0 and nan: unchanged).
    """
    if lesion_prior_threshold is None:
        export_prediction_from_logits(logits, properties, configuration_manager, plans_manager, dataset_json,
                                      output_file_truncated, False)
        return {"added_voxels": 0, "peak_probability": float("nan")}
    label_manager = plans_manager.get_label_manager(dataset_json)
    segmentation, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, plans_manager, configuration_manager, label_manager, properties, return_probabilities=True
    )
    prior = apply_lesion_presence_prior(
        segmentation, probabilities[lesion_output_channel(label_manager)], relative_threshold=lesion_prior_threshold
    )
    writer = plans_manager.image_reader_writer_class()
    output = Path(output_file_truncated)
    if prior.added_voxels:
        (output.parent / WITHOUT_PRIOR_FOLDER).mkdir(exist_ok=True)
        writer.write_seg(segmentation, str(output.parent / WITHOUT_PRIOR_FOLDER / output.name) +
                         dataset_json["file_ending"], properties)
    writer.write_seg(prior.labels, output_file_truncated + dataset_json["file_ending"], properties)
    return {"added_voxels": prior.added_voxels, "peak_probability": prior.peak_probability}
