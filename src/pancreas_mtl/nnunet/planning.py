"""Experiment planning and preprocessing with nnU-Net's own ResEnc planner, plus the small CPU configuration.

The CPU configuration is added to the plans file as an extra configuration that
``inherits_from`` the planned ``3d_fullres`` (nnU-Net resolves the inheritance itself). By default it shares the
parent's ``data_identifier``, so it reuses the preprocessed data and costs no second preprocessing. With a
``spacing`` of its own (coarser, as nnU-Net's ``3d_lowres``) it gets its own ``data_identifier`` and is
preprocessed itself; when it is also the configuration that trains, ``3d_fullres`` is planned but not
preprocessed, as nothing reads its data.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from copy import deepcopy
from pathlib import Path
from typing import Sequence

from pancreas_mtl.errors import UserInputError
from pancreas_mtl.nnunet.environment import NnunetFolders, dataset_id_of, run_nnunet_command

log = logging.getLogger(__name__)

PARENT_CONFIGURATION = "3d_fullres"
# The data identifier of 3d_fullres: the ResEnc planners reuse the default planner's, whatever the plans' name.
PARENT_DATA_IDENTIFIER = "nnUNetPlans_3d_fullres"


def preprocessed_data_identifier(plans_name: str, configuration: str, cpu_configuration: dict) -> str:
    """The folder (under the preprocessed dataset) holding the data ``configuration`` trains on: 3d_fullres's, which
    the CPU configuration shares unless it has a spacing of its own."""
    if configuration == cpu_configuration["name"] and cpu_configuration.get("spacing") is not None:
        return own_data_identifier(plans_name, configuration)
    return PARENT_DATA_IDENTIFIER


def own_data_identifier(plans_name: str, configuration: str) -> str:
    """nnU-Net's naming of a configuration's own data (``{plans}_{configuration}``)."""
    return f"{plans_name}_{configuration}"


def plan_and_preprocess(
    folders: NnunetFolders,
    dataset_id: int,
    planner: str,
    n_processes: int,
    configurations: Sequence[str] = (PARENT_CONFIGURATION,),
    verify_integrity: bool = True,
    preprocess: bool = True,
) -> float:
    """Run ``nnUNetv2_plan_and_preprocess`` for one dataset (``preprocess=False``: fingerprint and plans only);
    returns the wall time in seconds."""
    args = [
        "nnUNetv2_plan_and_preprocess",
        "-d",
        str(dataset_id),
        "-pl",
        planner,
        "-c",
        *configurations,
        "-np",
        *[str(n_processes)] * len(configurations),
        "-npfp",
        str(n_processes),
        "--no_pbar",
    ]
    if verify_integrity:
        args.append("--verify_dataset_integrity")
    if not preprocess:
        args.append("--no_pp")
    return _timed(folders, args, "planning and preprocessing" if preprocess else "planning")


def _timed(folders: NnunetFolders, args: list[str], what: str) -> float:
    """Run one nnU-Net command; log and return its wall time in seconds."""
    start = time.perf_counter()
    run_nnunet_command(args, folders.environment(), args[0])
    seconds = time.perf_counter() - start
    log.info("%s took %.1f s", what, seconds)
    return seconds


def derive_small_configuration(
    parent: dict,
    *,
    feature_divisor: int,
    max_blocks_per_stage: int,
    batch_size: int,
    patch_size: Sequence[int] | None,
    spacing: Sequence[float] | None = None,
    data_identifier: str | None = None,
) -> dict:
    """A configuration entry that inherits the parent's preprocessing with a smaller network.

    Features per stage are divided by ``feature_divisor`` (min 4), encoder blocks and decoder convs
    capped at ``max_blocks_per_stage``; the patch may shrink as long as every axis stays divisible by
    the network's total downsampling along it. A ``spacing`` (z, y, x mm) resamples to a grid of its own, whose
    data lives under ``data_identifier``.
    """
    arch = deepcopy(parent["architecture"])
    kwargs = arch["arch_kwargs"]
    kwargs["features_per_stage"] = [max(4, f // feature_divisor) for f in kwargs["features_per_stage"]]
    for key in ("n_blocks_per_stage", "n_conv_per_stage", "n_conv_per_stage_decoder"):
        if key in kwargs:
            kwargs[key] = [min(n, max_blocks_per_stage) for n in kwargs[key]]
    child: dict = {"inherits_from": PARENT_CONFIGURATION, "architecture": arch, "batch_size": int(batch_size)}
    if spacing is not None:
        if len(spacing) != len(parent["spacing"]) or not all(float(x) > 0 for x in spacing):
            raise UserInputError(
                f"spacing {list(spacing)}: the configuration needs {len(parent['spacing'])} positive values in mm "
                f"(z, y, x; the planned {PARENT_CONFIGURATION} has {parent['spacing']})"
            )
        if data_identifier is None:
            raise ValueError("a configuration with its own spacing needs its own data_identifier")
        child["spacing"] = [float(x) for x in spacing]
        child["data_identifier"] = data_identifier
    if patch_size is not None:
        patch = [int(p) for p in patch_size]
        strides = kwargs["strides"]
        if len(patch) != len(parent["patch_size"]):
            raise UserInputError(
                f"patch_size {patch} has {len(patch)} axes; the planned configuration has "
                f"{len(parent['patch_size'])} ({parent['patch_size']})"
            )
        for axis, size in enumerate(patch):
            factor = math.prod(int(s[axis]) if isinstance(s, (list, tuple)) else int(s) for s in strides)
            if size <= 0 or size % factor:
                raise UserInputError(
                    f"patch_size {patch}: axis {axis} ({size}) must be a positive multiple of {factor}, "
                    f"the network's total downsampling along that axis (strides {strides})"
                )
        child["patch_size"] = patch
    return child


def preprocess_configuration(
    folders: NnunetFolders, dataset_id: int, plans_name: str, configuration: str, n_processes: int
) -> float:
    """Run ``nnUNetv2_preprocess`` for one configuration of planned plans; returns the wall time in seconds."""
    args = ["nnUNetv2_preprocess", "-d", str(dataset_id), "-plans_name", plans_name, "-c", configuration, "--no_pbar"]
    return _timed(folders, [*args, "-np", str(n_processes)], f"preprocessing {configuration}")


def training_configuration_name(configuration: str, num_gpus: int) -> str:
    """The configuration a training of ``num_gpus`` GPUs runs: the chosen one, or with several GPUs the one
    :func:`multi_gpu_configuration` derives from it."""
    return configuration if num_gpus <= 1 else f"{configuration}_{num_gpus}gpus"


def multi_gpu_configuration(
    parent_name: str, parent_batch_size: int, num_gpus: int, batch_size_per_gpu: int | None
) -> dict:
    """nnU-Net splits a configuration's batch over the DDP ranks (and asserts batch >= GPUs): a configuration that
    ``inherits_from`` the chosen one with ``batch_size_per_gpu`` (default: the parent's batch) times ``num_gpus``,
    as nnU-Net's documentation raises the batch for several GPUs."""
    per_gpu = parent_batch_size if batch_size_per_gpu is None else int(batch_size_per_gpu)
    return {"inherits_from": parent_name, "batch_size": per_gpu * int(num_gpus)}


def add_configuration(plans_file: str | Path, name: str, configuration: dict) -> None:
    """Add (or replace) one configuration in an nnU-Net plans file, written atomically."""
    plans_file = Path(plans_file)
    plans = json.loads(plans_file.read_text())
    if name in plans["configurations"] and name == PARENT_CONFIGURATION:
        raise UserInputError(f"refusing to replace the planned configuration {name!r} in {plans_file}")
    plans["configurations"][name] = configuration
    tmp = plans_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(plans, indent=2))
    tmp.replace(plans_file)
    log.info("added configuration %r (inherits %r) to %s", name, configuration.get("inherits_from"), plans_file)


def install_splits(splits_json: str | Path, preprocessed_dataset_dir: str | Path) -> Path:
    """nnU-Net reads folds from splits_final.json in the preprocessed dataset folder."""
    target = Path(preprocessed_dataset_dir) / "splits_final.json"
    shutil.copyfile(splits_json, target)
    return target


def load_planned_configuration(plans_file: str | Path, name: str = PARENT_CONFIGURATION) -> dict:
    return json.loads(Path(plans_file).read_text())["configurations"][name]


def plan_dataset(
    folders: NnunetFolders,
    dataset: str,
    planner: str,
    plans_name: str,
    cpu_configuration: dict,
    splits_json: str | Path,
    n_processes: int,
    configuration: str | None = None,
    num_gpus: int = 1,
    batch_size_per_gpu: int | None = None,
) -> Path:
    """Plan and preprocess one raw dataset (``DatasetNNN_Name``), add the small CPU configuration to its plans
    (and, for a training of ``num_gpus`` > 1 on ``configuration``, its multi-GPU configuration), and install its
    splits; returns the plans file. The data ``configuration`` trains on is preprocessed (3d_fullres's, or the CPU
    configuration's where it has a spacing of its own, :func:`preprocessed_data_identifier`)."""
    dataset_dir = folders.preprocessed / dataset
    small = dict(cpu_configuration)
    name = small.pop("name")
    trains_on_own_data = (
        preprocessed_data_identifier(plans_name, configuration or PARENT_CONFIGURATION, cpu_configuration)
        != PARENT_DATA_IDENTIFIER
    )
    plan_and_preprocess(
        folders, dataset_id_of(dataset), planner=planner, n_processes=n_processes, preprocess=not trains_on_own_data
    )
    plans_file = dataset_dir / f"{plans_name}.json"
    if small.get("spacing") is not None:
        small["data_identifier"] = own_data_identifier(plans_name, name)
    add_configuration(plans_file, name, derive_small_configuration(load_planned_configuration(plans_file), **small))
    if trains_on_own_data:
        preprocess_configuration(folders, dataset_id_of(dataset), plans_name, name, n_processes)
    if configuration is not None and num_gpus > 1:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        parent_batch = PlansManager(str(plans_file)).get_configuration(configuration).batch_size
        add_configuration(
            plans_file,
            training_configuration_name(configuration, num_gpus),
            multi_gpu_configuration(configuration, parent_batch, num_gpus, batch_size_per_gpu),
        )
    install_splits(splits_json, dataset_dir)
    return plans_file
