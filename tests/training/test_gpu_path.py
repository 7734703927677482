"""The training path a GPU user runs, seen on the CPU: device outputs through the accelerator stand-in, compile,
the final validation, checkpoints under DDP ranks, and the sizing of the data-augmentation workers."""

from pathlib import Path

import pytest
import torch
from torch._dynamo import OptimizedModule
from torch._dynamo.utils import counters as dynamo_counters

from pancreas_mtl.config import check_config
from pancreas_mtl.errors import UserInputError
from pancreas_mtl.training import trainers
from tests.training.test_trainers import _smoke_trainer
from tests.workflow_helpers import REPO

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_full_validation_runs_on_device_outputs(smoke_workflow, tmp_path, monkeypatch, accelerator_standin, stage):
    """Defect: the full validation gave the predictor's logits (on the GPU) to nnU-Net's argmax, which calls
    .numpy(): every GPU training died at its first full validation, and every retry again."""
    trainer_class = {"stage1": trainers.nnUNetTrainerPancreasSeg, "stage2": trainers.nnUNetTrainerPancreasMultiTask}
    stage1_checkpoint = next((smoke_workflow / "results" / "nnunet" / "trained").rglob(
        "nnUNetTrainerPancreasSeg__*/fold_0/checkpoint_best_combined.pth"))
    extra = {"stage1_checkpoint": str(stage1_checkpoint)} if stage == "stage2" else {}
    trainer = _smoke_trainer(smoke_workflow, tmp_path, monkeypatch, trainer_class[stage], stage,
                             lesion_prior_threshold=0.5, **extra)
    trainer.initialize()
    metrics = trainer.run_full_validation()
    assert accelerator_standin.host_copies > 0  # the logits really came through the stand-in
    assert 0.0 <= metrics["whole_dice"] <= 1.0 and 0.0 <= metrics["lesion_dice"] <= 1.0
    assert ("macro_f1" in metrics) is (stage == "stage2")


@pytest.mark.slow
def test_compile_on_a_cpu_compiles_and_the_final_validation_runs_uncompiled(smoke_workflow, tmp_path, monkeypatch):
    """Defects: nnU-Net never compiles on a CPU whatever one asks (no switch), and its final validation ran on the
    compiled network (on an H100 it had not finished one case after 45 s). With the stage's compile on, the network
    is compiled, trains compiled, and nnU-Net's final validation compiles nothing more."""
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    stage1_checkpoint = next((smoke_workflow / "results" / "nnunet" / "trained").rglob(
        "nnUNetTrainerPancreasSeg__*/fold_0/checkpoint_best_combined.pth"))
    trainer = _smoke_trainer(smoke_workflow, tmp_path, monkeypatch, trainers.nnUNetTrainerPancreasMultiTask,
                             "stage2", compile=True, stage1_checkpoint=str(stage1_checkpoint))
    trainer.initialize()
    assert isinstance(trainer.network, OptimizedModule)
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    trainer.on_train_epoch_end([trainer.train_step(next(trainer.dataloader_train))])
    compiled = dynamo_counters["stats"]["unique_graphs"]
    assert compiled > 0  # the training step really ran compiled
    trainer.perform_actual_validation()
    assert dynamo_counters["stats"]["unique_graphs"] == compiled
    assert isinstance(trainer.network, OptimizedModule)  # training's wrapper is back
    assert (Path(trainer.output_folder) / "validation" / "summary.json").is_file()
    trainer.on_train_end()


@pytest.mark.slow
def test_only_rank_zero_writes_checkpoints_and_a_stale_partial_is_never_renamed(smoke_workflow, tmp_path,
                                                                                 monkeypatch):
    """Defect: save_checkpoint took 'not rank 0' from a missing .partial file, so another rank renamed rank 0's
    half-written file into place, or a stale one a kill had left."""
    trainer = _smoke_trainer(smoke_workflow, tmp_path, monkeypatch, trainers.nnUNetTrainerPancreasSeg, "stage1")
    trainer.initialize()
    out = Path(trainer.output_folder)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "checkpoint_best_combined.pth"
    Path(f"{target}.partial").write_bytes(b"left by a kill")
    trainer.local_rank = 1
    trainer.save_checkpoint(str(target))
    assert not target.exists() and Path(f"{target}.partial").read_bytes() == b"left by a kill"
    trainer.local_rank = 0
    trainer.save_checkpoint(str(target))
    assert torch.load(target, map_location="cpu", weights_only=False)["current_epoch"] == 1
    assert not Path(f"{target}.partial").exists()


def test_augmentation_workers_are_shared_over_the_gpus():
    """Defect: every DDP rank started the job's whole thread count of augmentation workers (4 GPUs, 8 threads:
    4 x 8 workers on 8 cores)."""
    from pancreas_mtl.nnunet.train_command import augmentation_workers_per_gpu

    assert augmentation_workers_per_gpu("auto", 8, 4) == 2
    assert augmentation_workers_per_gpu("auto", 8, 1) == 8
    assert augmentation_workers_per_gpu("auto", 2, 4) == 1
    assert augmentation_workers_per_gpu(3, 8, 4) == 3


@pytest.mark.parametrize("num_gpus, train_gpus, message", [
    (2, 1, "training.num_gpus is 2 but resources.train_gpus is 1"),
    (2, 0, "training.num_gpus is 2 but resources.train_gpus is 0"),
    (1, 4, "resources.train_gpus is 4 but training.num_gpus is 1"),
])
def test_gpus_declared_and_trained_on_must_agree(num_gpus, train_gpus, message):
    config = {"training": {"num_gpus": num_gpus}, "resources": {"train_gpus": train_gpus}}
    with pytest.raises(UserInputError) as error:
        check_config(config, SCHEMA)
    assert message in str(error.value)
    check_config({"training": {"num_gpus": 2}, "resources": {"train_gpus": 2}}, SCHEMA)
