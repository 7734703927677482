"""Resampling the logits back to the input grid with torch agrees with nnU-Net's CPU resampling."""

import numpy as np
import pytest
import torch
from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from pancreas_mtl.inference.device_resampling import resample_to_shape, supports


@pytest.mark.parametrize(
    "shape, new_shape, spacing, new_spacing",
    [
        ((3, 20, 30, 40), (25, 45, 33), (1.0, 1.0, 1.0), (0.8, 0.67, 1.2)),  # isotropic: trilinear
        ((3, 12, 40, 50), (30, 52, 61), (4.0, 0.8, 0.8), (1.6, 0.62, 0.66)),  # anisotropic: in-plane, then z
        ((3, 48, 60, 60), (16, 50, 70), (1.0, 0.8, 0.8), (3.0, 0.96, 0.69)),  # target anisotropic, z shrinks
        ((3, 10, 30, 40), (40, 30, 40), (5.0, 1.0, 1.0), (1.25, 1.0, 1.0)),  # along z only
        ((3, 40, 12, 50), (44, 30, 52), (0.8, 4.0, 0.8), (0.7, 1.6, 0.75)),  # low-resolution axis in the middle
        ((3, 20, 30, 40), (20, 30, 40), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),  # nothing to do
    ],
)
@pytest.mark.parametrize("dtype, tolerance", [(np.float32, 2e-5), (np.float16, 1e-2)])  # nnU-Net's logits: float16
def test_torch_resampling_gives_nnunets_logits_and_labels(shape, new_shape, spacing, new_spacing, dtype, tolerance):
    logits = np.random.default_rng(0).normal(size=shape).astype(dtype)
    expected = resample_data_or_seg_to_shape(
        logits, new_shape, spacing, new_spacing, is_seg=False, order=1, order_z=0, force_separate_z=None
    )
    resampled = resample_to_shape(
        torch.from_numpy(logits), new_shape, spacing, new_spacing, order=1, order_z=0, force_separate_z=None
    ).numpy()
    assert resampled.shape == expected.shape and resampled.dtype == expected.dtype
    assert np.abs(resampled.astype(np.float64) - expected).max() <= tolerance
    # labels: the same wherever the two largest logits are not tied within the tolerance
    top2 = np.sort(expected.astype(np.float64), axis=0)[-2:]
    decided = top2[1] - top2[0] > 2 * tolerance
    assert np.array_equal(resampled.argmax(0)[decided], expected.argmax(0)[decided])
    assert decided.mean() > 0.95


def test_plans_with_tricubic_probability_resampling_keep_nnunets_path():
    def configuration(order):
        return ConfigurationManager(
            {
                "architecture": {},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {
                    "is_seg": False,
                    "order": order,
                    "order_z": 0,
                    "force_separate_z": None,
                },
            }
        )

    assert supports(configuration(1)) and supports(configuration(0))
    assert not supports(configuration(3))


def test_region_outputs_become_nnunets_label_map_on_the_device():
    """Region probabilities (whole pancreas, lesion) become nnU-Net's label map, the lesion over the pancreas, on the
    device and without a trip through numpy (an accelerator tensor refuses it)."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from pancreas_mtl.data.labels import REGION_LABELS, REGIONS_CLASS_ORDER
    from pancreas_mtl.inference.device_resampling import segmentation_on_device
    from tests.accelerator import OnAccelerator

    manager = LabelManager(REGION_LABELS, REGIONS_CLASS_ORDER)
    logits = torch.from_numpy(np.random.default_rng(1).normal(scale=3, size=(2, 5, 6, 7)).astype(np.float32))
    probabilities = manager.apply_inference_nonlin(logits)
    expected = manager.convert_probabilities_to_segmentation(probabilities.numpy())
    on_device = segmentation_on_device(manager, probabilities.as_subclass(OnAccelerator))
    assert on_device.dtype == torch.uint8
    labels = on_device.cpu().numpy()
    assert np.array_equal(labels, expected) and set(np.unique(labels)) == {0, 1, 2}
    whole, lesion = probabilities.numpy() > 0.5
    assert np.array_equal(labels == 2, lesion) and np.array_equal(labels == 1, whole & ~lesion)
