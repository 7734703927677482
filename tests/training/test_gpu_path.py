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
    stage1_checkpoint = next(
        (smoke_workflow / "results" / "nnunet" / "trained").rglob(
            "nnUNetTrainerPancreasSeg__*/fold_0/checkpoint_best_combined.pth"
        )
    )
    extra = {"stage1_checkpoint": str(stage1_checkpoint)} if stage == "stage2" else {}
    trainer = _smoke_trainer(
        smoke_workflow, tmp_path, monkeypatch, trainer_class[stage], stage, lesion_prior_threshold=0.5, **extra
    )
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
    stage1_checkpoint = next(
        (smoke_workflow / "results" / "nnunet" / "trained").rglob(
            "nnUNetTrainerPancreasSeg__*/fold_0/checkpoint_best_combined.pth"
        )
    )
    trainer = _smoke_trainer(
        smoke_workflow,
        tmp_path,
        monkeypatch,
        trainers.nnUNetTrainerPancreasMultiTask,
        "stage2",
        compile=True,
        stage1_checkpoint=str(stage1_checkpoint),
    )
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
def test_only_rank_zero_writes_checkpoints_and_a_stale_partial_is_never_renamed(smoke_workflow, tmp_path, monkeypatch):
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


@pytest.mark.slow
def test_a_resumed_adamw_keeps_its_step_counts_on_the_host(smoke_workflow, tmp_path, monkeypatch, accelerator_standin):
    """Defect: nnU-Net loads a checkpoint onto the training device, AdamW's step counts with it, and AdamW (neither
    capturable nor fused) then read each count back with .item() at every step: hundreds of host synchronisations
    per step of a resumed GPU training."""
    from tests.accelerator import OnAccelerator, load_checkpoints_onto_accelerator

    trainer = _smoke_trainer(
        smoke_workflow, tmp_path, monkeypatch, trainers.nnUNetTrainerPancreasSeg, "stage1", optimizer="adamw"
    )
    trainer.initialize()
    for param in trainer.network.parameters():
        param.grad = torch.zeros_like(param)
    trainer.optimizer.step()  # AdamW's state, step counts included
    latest = Path(trainer.output_folder) / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(latest))

    load_checkpoints_onto_accelerator(monkeypatch)
    resumed = _smoke_trainer(
        smoke_workflow, tmp_path, monkeypatch, trainers.nnUNetTrainerPancreasSeg, "stage1", optimizer="adamw"
    )
    resumed.load_checkpoint(str(latest))
    exp_avg = [state["exp_avg"] for state in resumed.optimizer.state.values()]
    assert all(isinstance(moment, OnAccelerator) for moment in exp_avg)  # the checkpoint did land on the device
    steps = [state["step"] for state in resumed.optimizer.state.values()]
    assert steps and len(steps) == len(list(resumed.network.parameters()))
    assert all(type(step) is torch.Tensor and step.device.type == "cpu" and step.item() == 1 for step in steps)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_training_steps_count_lesion_voxels_on_the_device(
    smoke_workflow, tmp_path, monkeypatch, accelerator_standin, stage
):
    """Defect: stage 1 counted each patch's lesion voxels on the host, single-threaded, before the batch went to the
    GPU, at every step, while the GPU waited (stage 2 counted on the device)."""
    from tests.accelerator import on_host

    trainer_class = {"stage1": trainers.nnUNetTrainerPancreasSeg, "stage2": trainers.nnUNetTrainerPancreasMultiTask}
    stage1_checkpoint = next(
        (smoke_workflow / "results" / "nnunet" / "trained").rglob(
            "nnUNetTrainerPancreasSeg__*/fold_0/checkpoint_best_combined.pth"
        )
    )
    extra = {"stage1_checkpoint": str(stage1_checkpoint)} if stage == "stage2" else {}
    trainer = _smoke_trainer(smoke_workflow, tmp_path, monkeypatch, trainer_class[stage], stage, **extra)
    trainer.initialize()
    train_loader, _ = trainer.get_dataloaders()
    batch = on_host(next(train_loader))
    with pytest.raises(TypeError, match="host memory"):  # the stand-in does catch host computation
        batch["target"][0].sum()
    outputs = trainer.train_step(batch)
    assert 0.0 <= outputs["lesion_patch_share"] <= 1.0 and float(outputs["loss"]) == float(outputs["loss"])


@pytest.mark.slow
def test_full_validation_falls_back_to_the_cpu_when_the_device_runs_out_of_memory(
    smoke_workflow, tmp_path, monkeypatch, accelerator_standin
):
    """Defect: the full validation's softmax and argmax ran on the device outside any out-of-memory fallback, inside
    the training process: one large volume ended the training (under DDP, every rank's). Here the device runs out of
    memory for every argmax on it."""
    from tests.accelerator import OnAccelerator

    trainer = _smoke_trainer(
        smoke_workflow, tmp_path, monkeypatch, trainers.nnUNetTrainerPancreasSeg, "stage1", lesion_prior_threshold=0.5
    )
    trainer.initialize()
    expected = trainer.run_full_validation()
    argmax = trainers.segmentation_on_device
    on_device = []

    def out_of_memory_on_the_device(label_manager, probabilities):
        on_device.append(isinstance(probabilities, OnAccelerator))
        if on_device[-1]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB (stand-in)")
        return argmax(label_manager, probabilities)

    monkeypatch.setattr(trainers, "segmentation_on_device", out_of_memory_on_the_device)
    assert trainer.run_full_validation() == expected
    assert on_device and on_device[0] and on_device.count(True) == on_device.count(False)
    assert "out of device memory in the full validation" in Path(trainer.log_file).read_text()


def test_augmentation_workers_are_shared_over_the_gpus():
    """Defect: every DDP rank started the job's whole thread count of augmentation workers (4 GPUs, 8 threads:
    4 x 8 workers on 8 cores)."""
    from pancreas_mtl.training.train_command import augmentation_workers_per_gpu

    assert augmentation_workers_per_gpu("auto", 8, 4) == 2
    assert augmentation_workers_per_gpu("auto", 8, 1) == 8
    assert augmentation_workers_per_gpu("auto", 2, 4) == 1
    assert augmentation_workers_per_gpu(3, 8, 4) == 3


@pytest.mark.parametrize(
    "num_gpus, train_gpus, message",
    [
        (2, 1, "training.num_gpus is 2 but resources.train_gpus is 1"),
        (2, 0, "training.num_gpus is 2 but resources.train_gpus is 0"),
        (1, 4, "resources.train_gpus is 4 but training.num_gpus is 1"),
    ],
)
def test_gpus_declared_and_trained_on_must_agree(num_gpus, train_gpus, message):
    config = {"training": {"num_gpus": num_gpus}, "resources": {"train_gpus": train_gpus}}
    with pytest.raises(UserInputError) as error:
        check_config(config, SCHEMA)
    assert message in str(error.value)
    check_config({"training": {"num_gpus": 2}, "resources": {"train_gpus": 2}}, SCHEMA)
