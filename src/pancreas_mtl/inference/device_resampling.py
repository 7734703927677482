"""Resampling predicted logits back to the input grid with torch, on the device that computed them.

nnU-Net resamples the logits on the CPU (``resample_data_or_seg_to_shape`` with the plans'
``resampling_fn_probabilities_kwargs``: linear, order 1, and for anisotropic volumes in-plane first, then nearest
along the low-resolution axis). On a GPU that is the largest step of a case after the model itself. This module
does the same arithmetic with ``torch.nn.functional.interpolate`` - ``align_corners=False`` is skimage's and
scipy's pixel-centre convention, ``nearest-exact`` rounds like ``map_coordinates(order=0)`` - and decides
separate-z exactly as nnU-Net does, with its own function. Tricubic (order 3) has no torch counterpart: such
plans keep nnU-Net's CPU path.

:func:`segmentation_on_input_crop` returns the labels (and the class probabilities) on the grid of the cropped
input; inserting them into the full image and transposing back stay nnU-Net's (``export_workers``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from nnunetv2.preprocessing.resampling.default_resampling import (
    ANISO_THRESHOLD,
    determine_do_sep_z_and_axis,
    resample_data_or_seg_to_shape,
)

#: interpolation orders this module reproduces, by torch mode (nnU-Net's linear and nearest)
TORCH_MODES = {1: ("bilinear", "trilinear"), 0: ("nearest-exact", "nearest-exact")}


def supports(configuration_manager) -> bool:
    """Whether the plans' probability resampling is one this module reproduces (nnU-Net's function, orders 0/1)."""
    kwargs = configuration_manager.configuration["resampling_fn_probabilities_kwargs"]
    return (
        configuration_manager.configuration["resampling_fn_probabilities"] == resample_data_or_seg_to_shape.__name__
        and not kwargs.get("is_seg", False)
        and kwargs.get("order", 3) in TORCH_MODES
        and kwargs.get("order_z", 0) in TORCH_MODES
    )


def resample_to_shape(
    data: torch.Tensor,
    new_shape,
    current_spacing,
    new_spacing,
    order: int = 1,
    order_z: int = 0,
    force_separate_z: bool | None = False,
    separate_z_anisotropy_threshold: float = ANISO_THRESHOLD,
) -> torch.Tensor:
    """``resample_data_or_seg_to_shape(data, ..., is_seg=False)`` for a (c, x, y, z) tensor, on its device: computed
    in float32 and returned in the input's dtype, as nnU-Net returns it (its logits are float16)."""
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(data.shape[1:]) == new_shape:
        return data
    do_separate_z, axis = determine_do_sep_z_and_axis(
        force_separate_z, current_spacing, new_spacing, separate_z_anisotropy_threshold
    )
    volume = data.float()[None]  # (1, c, x, y, z)
    if not do_separate_z:
        return F.interpolate(volume, size=new_shape, mode=TORCH_MODES[order][1], **_corners(TORCH_MODES[order][1]))[
            0
        ].to(data.dtype)
    # in-plane, slice by slice along the low-resolution axis, then along that axis
    slices = volume[0].movedim(axis + 1, 0)  # (n_slices, c, a, b)
    in_plane = tuple(s for i, s in enumerate(new_shape) if i != axis)
    slices = F.interpolate(slices, size=in_plane, mode=TORCH_MODES[order][0], **_corners(TORCH_MODES[order][0]))
    volume = slices.movedim(0, axis + 1)[None]  # (1, c, ...) with the low-resolution axis at its place
    if volume.shape[2:] != new_shape:
        mode = TORCH_MODES[order_z][1]
        volume = F.interpolate(volume, size=new_shape, mode=mode, **_corners(mode))
    return volume[0].to(data.dtype)


def _corners(mode: str) -> dict:
    return {} if mode.startswith("nearest") else {"align_corners": False}


def segmentation_on_input_crop(
    logits: torch.Tensor, properties: dict, plans_manager, configuration_manager, label_manager
) -> tuple[np.ndarray, torch.Tensor]:
    """nnU-Net's export up to the argmax, on the logits' device: the labels (uint8, CPU) and the class
    probabilities (on the device) on the grid of the cropped input, before nnU-Net's insertion into the full image
    and its transpose back."""
    spacing_transposed = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    shape = properties["shape_after_cropping_and_before_resampling"]
    current_spacing = (
        configuration_manager.spacing
        if len(configuration_manager.spacing) == len(shape)
        else [spacing_transposed[0], *configuration_manager.spacing]
    )
    kwargs = configuration_manager.configuration["resampling_fn_probabilities_kwargs"]
    resampled = resample_to_shape(
        logits,
        shape,
        current_spacing,
        spacing_transposed,
        kwargs.get("order", 3),
        kwargs.get("order_z", 0),
        kwargs.get("force_separate_z", False),
    )
    probabilities = label_manager.apply_inference_nonlin(resampled)
    return segmentation_on_device(label_manager, probabilities).cpu().numpy(), probabilities


def segmentation_on_device(label_manager, probabilities: torch.Tensor) -> torch.Tensor:
    """nnU-Net's ``convert_probabilities_to_segmentation`` for a tensor on any device, as uint8 on that device.

    nnunetv2 2.8.1 takes the argmax of softmax outputs in numpy (``.numpy()`` on the tensor), which raises for a
    tensor on a GPU; its region branch is torch and stays as it is. The argmax here picks, like numpy's, the first
    of equal maxima."""
    if label_manager.has_regions:
        return label_manager.convert_probabilities_to_segmentation(probabilities).to(torch.uint8)
    return probabilities.argmax(0).to(torch.uint8)
