"""The real-scale benchmark: the real configuration's network (ResEnc M 3d_fullres planned from real CT) with
untrained weights, timed on real test images. Timing and memory only: untrained masks say nothing about accuracy.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from pancreas_mtl.data.conversion import convert_quiz_to_nnunet
from pancreas_mtl.inference.benchmark import run_benchmark
from pancreas_mtl.inference.run import InferenceSettings
from pancreas_mtl.model.trainers import nnUNetTrainerPancreasMultiTask
from pancreas_mtl.nnunet.environment import NnunetFolders, dataset_folder_name
from pancreas_mtl.nnunet.planning import plan_and_preprocess

log = logging.getLogger(__name__)

UNTRAINED_NOTE = "untrained weights (seeded random initialisation): timing and memory only, masks are meaningless"


def make_untrained_model_folder(preprocessed_dataset_dir: Path, plans_name: str, configuration: str,
                                out_folder: Path, seed: int = 0,
                                trainer_class=nnUNetTrainerPancreasMultiTask) -> Path:
    """An nnU-Net model folder (plans.json, dataset.json, fold_0/checkpoint_final.pth) with random weights."""
    plans = json.loads((preprocessed_dataset_dir / f"{plans_name}.json").read_text())
    dataset_json = json.loads((preprocessed_dataset_dir / "dataset.json").read_text())
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    torch.manual_seed(seed)
    network = trainer_class.build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    (out_folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (out_folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (out_folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    torch.save(
        {
            "network_weights": network.state_dict(),
            "init_args": {"plans": plans, "configuration": configuration, "fold": 0, "dataset_json": dataset_json},
            "trainer_name": trainer_class.__name__,
            "inference_allowed_mirroring_axes": (0, 1, 2),
            "note": UNTRAINED_NOTE,
        },
        out_folder / "fold_0" / "checkpoint_final.pth",
    )
    return out_folder


def run_real_scale_benchmark(quiz_dir: Path, out_dir: Path, dataset_id: int, plans_name: str,
                             planner: str, settings: InferenceSettings, max_cases: int, repeats: int,
                             n_processes: int = 2) -> dict:
    """Convert the real sample, plan 3d_fullres with the ResEnc planner, and time the untrained network."""
    folders = NnunetFolders.under(out_dir / "nnunet")
    dataset = dataset_folder_name(dataset_id, "RealScale")
    raw = folders.raw / dataset
    convert_quiz_to_nnunet(quiz_dir, raw, out_dir / "splits_final.json", out_dir / "case_table.csv",
                           dataset_name=dataset, n_workers=n_processes, allow_partial=True)
    plan_and_preprocess(folders, dataset_id, planner=planner, n_processes=n_processes)
    model = make_untrained_model_folder(folders.preprocessed / dataset, plans_name, "3d_fullres",
                                        out_dir / "untrained_model")
    images = sorted((raw / "imagesTs").glob("*_0000.nii.gz"))[:max_cases]
    if not images:
        raise RuntimeError(f"no test images in {quiz_dir} for the real-scale benchmark")
    return run_benchmark(model, [0], "checkpoint_final.pth", images, out_dir, settings, repeats=repeats,
                         setting="real_scale", with_agreement=False, note=UNTRAINED_NOTE)
