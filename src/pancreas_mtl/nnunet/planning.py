"""Experiment planning and preprocessing with nnU-Net's own ResEnc planner, plus the small CPU configuration.

The CPU configuration is added to the plans file as an extra configuration that
``inherits_from`` the planned ``3d_fullres`` (nnU-Net resolves the inheritance itself); it shares the
parent's ``data_identifier``, so it reuses the preprocessed data and costs no second preprocessing.
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


def plan_and_preprocess(
    folders: NnunetFolders,
    dataset_id: int,
    planner: str,
    n_processes: int,
    configurations: Sequence[str] = (PARENT_CONFIGURATION,),
    verify_integrity: bool = True,
) -> float:
    """Run ``nnUNetv2_plan_and_preprocess`` for one dataset; returns the wall time in seconds."""
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
    start = time.perf_counter()
    run_nnunet_command(args, folders.environment(), "nnUNetv2_plan_and_preprocess")
    seconds = time.perf_counter() - start
    log.info("planning and preprocessing took %.1f s", seconds)
    return seconds


def derive_small_configuration(
    parent: dict,
    *,
    feature_divisor: int,
    max_blocks_per_stage: int,
    batch_size: int,
    patch_size: Sequence[int] | None,
) -> dict:
    """A configuration entry that inherits the parent's preprocessing with a smaller network.

    Features per stage are divided by ``feature_divisor`` (min 4), encoder blocks and decoder convs
    capped at ``max_blocks_per_stage``; the patch may shrink as long as every axis stays divisible by
    the network's total downsampling along it.
    """
    arch = deepcopy(parent["architecture"])
    kwargs = arch["arch_kwargs"]
    kwargs["features_per_stage"] = [max(4, f // feature_divisor) for f in kwargs["features_per_stage"]]
    for key in ("n_blocks_per_stage", "n_conv_per_stage", "n_conv_per_stage_decoder"):
        if key in kwargs:
            kwargs[key] = [min(n, max_blocks_per_stage) for n in kwargs[key]]
    child: dict = {"inherits_from": PARENT_CONFIGURATION, "architecture": arch, "batch_size": int(batch_size)}
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
    splits; returns the plans file."""
    dataset_dir = folders.preprocessed / dataset
    plan_and_preprocess(folders, dataset_id_of(dataset), planner=planner, n_processes=n_processes)
    plans_file = dataset_dir / f"{plans_name}.json"
    small = dict(cpu_configuration)
    name = small.pop("name")
    add_configuration(plans_file, name, derive_small_configuration(load_planned_configuration(plans_file), **small))
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
