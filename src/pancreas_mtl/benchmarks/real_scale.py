"""The real-scale benchmark's model: the real configuration's network (ResEnc M 3d_fullres planned from real CT)
with untrained weights. Timing and memory only: untrained masks say nothing about accuracy.

The real cases go through the workflow's own conversion and planning rules (as a second dataset); this module
only writes the untrained model folder that the benchmark then times.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from pancreas_mtl.data.labels import NUM_SUBTYPES
from pancreas_mtl.model.network import build_multitask_network
from pancreas_mtl.nnunet.trainer_names import STAGE2_TRAINERS

UNTRAINED_NOTE = "untrained weights (seeded random initialisation): timing and memory only, masks are meaningless"


def make_untrained_model_folder(
    plans_file: Path,
    dataset_json_file: Path,
    configuration: str,
    out_folder: Path,
    head: str = "roi_attention",
    seed: int = 0,
) -> Path:
    """An nnU-Net model folder (plans.json, dataset.json, fold_0/checkpoint_final.pth) with random weights."""
    plans = json.loads(Path(plans_file).read_text())
    dataset_json = json.loads(Path(dataset_json_file).read_text())
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    torch.manual_seed(seed)
    network = build_multitask_network(
        plans_manager,
        configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False,
        head_variant=head,
        num_classes=NUM_SUBTYPES,
    )
    out_folder = Path(out_folder)
    (out_folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (out_folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (out_folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    torch.save(
        {
            "network_weights": network.state_dict(),
            "init_args": {"plans": plans, "configuration": configuration, "fold": 0, "dataset_json": dataset_json},
            "trainer_name": STAGE2_TRAINERS[head],
            "inference_allowed_mirroring_axes": (0, 1, 2),
            "note": UNTRAINED_NOTE,
        },
        out_folder / "fold_0" / "checkpoint_final.pth",
    )
    return out_folder
