"""nnU-Net plans as nnU-Net 2.8's planners write them, for tests that build networks or configurations from plans
without planning a dataset."""

from __future__ import annotations

RESAMPLING = {
    "resampling_fn_data": "resample_data_or_seg_to_shape",
    "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
    "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
    "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
}


def arch_kwargs(**network) -> dict:
    """A 3D network's ``arch_kwargs``: the layers every nnU-Net CT plan uses, and ``network`` (stages, features,
    kernels, strides, blocks)."""
    return {
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
        **network,
    }


def configuration(
    *,
    data_identifier: str,
    patch_size,
    median_image_size,
    spacing,
    network_class_name: str,
    arch_kwargs: dict,
    batch_dice: bool,
    batch_size: int = 2,
) -> dict:
    """One CT configuration of a plans file (network_class_name = UNet_class.__module__ + '.' + __name__)."""
    return {
        "data_identifier": data_identifier,
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": batch_size,
        "patch_size": list(patch_size),
        "median_image_size_in_voxels": list(median_image_size),
        "spacing": list(spacing),
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        **RESAMPLING,
        "architecture": {
            "network_class_name": network_class_name,
            "arch_kwargs": arch_kwargs,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": batch_dice,
    }


def plans(configurations: dict, *, dataset_name: str, spacing, shape) -> dict:
    """A ResEnc M plans file holding ``configurations``."""
    return {
        "dataset_name": dataset_name,
        "plans_name": "nnUNetResEncUNetMPlans",
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": list(shape),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": configurations,
        "experiment_planner_used": "nnUNetPlannerResEncM",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
    }
