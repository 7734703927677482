"""Trainer pieces without a training run, and the trainers on a real preprocessed smoke dataset."""

import math

import numpy as np
import pytest
import torch

from pancreas_mtl.config import config_problems, load_schema
from pancreas_mtl.nnunet.trainer_names import STAGE1_TRAINER, STAGE1_TRAINERS, STAGE2_TRAINERS
from pancreas_mtl.training import trainers
from pancreas_mtl.training.losses import (
    PolyLRPerParamGroup,
    SubtypeLoss,
    class_weights_from_counts,
)
from pancreas_mtl.training.selection import CheckpointSelector
from pancreas_mtl.training.settings import (
    SETTINGS_ENV,
    TrainingSettings,
    stage_settings,
)
from pancreas_mtl.training.trainers import nnUNetTrainerPancreasMultiTask
from tests.workflow_helpers import REPO


def schema_default_training() -> dict:
    """The config's ``training`` section with every value at its schema default."""
    config: dict = {}
    assert config_problems(config, load_schema(REPO / "workflow" / "schemas" / "config.schema.yaml")) == []
    return config["training"]


def test_selector_keeps_the_epoch_of_the_best_f1_and_earliest_among_equals():
    selector = CheckpointSelector(("macro_f1", "combined"))
    history = [
        {"macro_f1": 0.4, "combined": 0.5},
        {"macro_f1": 0.8, "combined": 0.6},
        {"macro_f1": 0.8, "combined": 0.7},  # equal F1: the earlier epoch stays best
        {"macro_f1": float("nan"), "combined": 0.65},
        {"macro_f1": 0.7, "combined": 0.9},
    ]
    saved = {name: [] for name in selector.best}
    for epoch, metrics in enumerate(history):
        for name in selector.update(metrics):
            saved[name].append(epoch)
    assert saved["macro_f1"][-1] == 1
    assert saved["combined"][-1] == 4
    restored = CheckpointSelector(("macro_f1", "combined"))
    restored.restore(history[:3])
    assert restored.best == {"macro_f1": 0.8, "combined": 0.7}


def test_class_weights_are_inverse_frequency():
    weights = class_weights_from_counts([0, 1, 1, 1, 2, 2])
    assert torch.allclose(weights, torch.tensor([2.0, 2 / 3, 1.0]))
    with pytest.raises(ValueError, match="every subtype needs training cases"):
        class_weights_from_counts([0, 1, 1])


def test_class_weights_count_per_sample_not_per_weight_sum():
    """Defect: torch's weighted mean divides by the batch's summed weights, which cancels most of the weighting.

    With the real training counts 62/106/84 the weights are N / (3 n_k) = 252/186, 252/318, 252/252. At equal
    logits every sample's cross-entropy is ln 3, so the batch loss must be ln 3 times the mean of its samples'
    weights: a subtype-0 sample alone gives 1.3548 ln 3 (torch's weighted mean gives ln 3 whatever the class).
    """
    weights = class_weights_from_counts([0] * 62 + [1] * 106 + [2] * 84)
    assert torch.allclose(weights, torch.tensor([252 / 186, 252 / 318, 1.0]))
    loss = SubtypeLoss(0.0, weights)
    equal_logits = torch.zeros(2, 3)
    assert loss(equal_logits[:1], torch.tensor([0])).item() == pytest.approx(252 / 186 * math.log(3))
    pair = loss(equal_logits, torch.tensor([0, 1])).item()
    assert pair == pytest.approx((252 / 186 + 252 / 318) / 2 * math.log(3))
    # each class's share of a batch holding one sample of each is its weight's share: 1/3 each only if the
    # weights are equal, i.e. the loss is no longer the class-blind mean
    assert pair != pytest.approx(math.log(3))


def test_focal_loss_is_cross_entropy_at_gamma_zero_and_down_weights_easy_samples():
    torch.manual_seed(0)
    logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    weight = torch.tensor([1.0, 2.0, 0.5])
    per_sample = torch.nn.functional.cross_entropy(logits, target, reduction="none") * weight[target]
    assert torch.allclose(SubtypeLoss(0.0, weight)(logits, target), per_sample.mean())
    assert SubtypeLoss(2.0)(logits, target) < SubtypeLoss(0.0)(logits, target)


def test_classification_loss_counts_only_the_samples_that_carry_the_lesion():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]], requires_grad=True)
    target = torch.tensor([1, 1, 2])
    loss = SubtypeLoss(0.0)
    per_sample = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    counts = torch.tensor([True, False, True])
    assert torch.allclose(loss(logits, target, counts), (per_sample[0] + per_sample[2]) / 2)
    none = loss(logits, target, torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0.0
    none.backward()  # still part of the graph: a batch without lesion patches trains the segmentation only
    assert torch.count_nonzero(logits.grad) == 0


def test_poly_schedule_keeps_each_groups_ratio():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [a], "lr": 0.01}, {"params": [b], "lr": 0.1}], lr=0.01)
    schedule = PolyLRPerParamGroup(optimizer, max_steps=10)
    schedule.step(5)
    lr_a, lr_b = schedule.get_last_lr()
    assert lr_a == pytest.approx(0.01 * 0.5**0.9)
    assert lr_b / lr_a == pytest.approx(10)


def test_settings_reject_unknown_keys_and_bad_loss(tmp_path, monkeypatch):
    training = schema_default_training()
    with pytest.raises(ValueError, match="unknown training settings: epochs"):
        TrainingSettings.from_dict({**training["stage1"], "epochs": 3})
    with pytest.raises(ValueError, match="classification_loss"):
        stage_settings(training, "stage2", classification_loss="hinge")
    path = stage_settings(training, "stage1", num_epochs=3).write(tmp_path / "s.json")
    monkeypatch.setenv(SETTINGS_ENV, str(path))
    assert TrainingSettings.from_environment().num_epochs == 3
    monkeypatch.delenv(SETTINGS_ENV)
    with pytest.raises(RuntimeError, match=SETTINGS_ENV):
        TrainingSettings.from_environment()
    assert TrainingSettings.from_environment(required=False) is None


def test_settings_take_every_default_from_the_schema():
    """The dataclass repeats no default: each stage's settings are exactly the schema's stage section."""
    training = schema_default_training()
    for stage in ("stage1", "stage2"):
        settings = stage_settings(training, stage)
        for key, value in training[stage].items():
            if key != "trainer":  # which class trains (stage 1): the trainer's name, not a setting
                assert getattr(settings, key) == value, (stage, key)
    assert stage_settings(training, "stage1").head_dropout is None


def test_trainer_classes_carry_the_names_the_workflow_uses():
    assert trainers.nnUNetTrainerPancreasSeg.__name__ == STAGE1_TRAINER
    assert {name: getattr(trainers, name).__name__ for name in STAGE1_TRAINERS.values()} == {
        name: name for name in STAGE1_TRAINERS.values()
    }
    for head, name in STAGE2_TRAINERS.items():
        assert getattr(trainers, name).head_variant == head


@pytest.mark.slow
def test_stage2_trainer_lands_stage1_weights_exactly(smoke_workflow, tmp_path, monkeypatch):
    """A real stage-2 trainer, built the way nnUNetv2_train builds it, copies every stage-1 tensor."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    root = smoke_workflow / "results" / "nnunet"
    dataset = "Dataset501_PancreasQuiz"
    stage1_folder = (
        root / "trained" / dataset / "nnUNetTrainerPancreasSeg__nnUNetResEncUNetMPlans__3d_cpu_demo" / "fold_0"
    )
    stage1_file = stage1_folder / "checkpoint_best_combined.pth"
    monkeypatch.setenv("nnUNet_raw", str(root / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(root / "preprocessed"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "trained"))  # the trainer's own folder: not the smoke run's
    settings = stage_settings(
        schema_default_training(),
        "stage2",
        stage1_checkpoint=str(stage1_file),
        case_table=str(smoke_workflow / "results" / "dataset" / dataset / "case_table.csv"),
    )
    monkeypatch.setenv(SETTINGS_ENV, str(settings.write(tmp_path / "settings.json")))
    plans = load_json(str(root / "preprocessed" / dataset / "nnUNetResEncUNetMPlans.json"))
    plans["continue_training"] = False
    dataset_json = load_json(str(root / "preprocessed" / dataset / "dataset.json"))
    trainer = nnUNetTrainerPancreasMultiTask(plans, "3d_cpu_demo", 0, dataset_json, device=torch.device("cpu"))
    trainer.initialize()

    stage1 = torch.load(stage1_file, map_location="cpu", weights_only=False)["network_weights"]
    model = trainer.plain_network().state_dict()
    head_keys = [k for k in model if k.startswith("classification_head.")]
    assert head_keys
    for key, tensor in stage1.items():
        assert torch.equal(model[key], tensor), key
    assert set(model) - set(stage1) == set(head_keys)
    assert set(trainer.case_subtypes) >= set(trainer.do_split()[0])


def _smoke_trainer(smoke_workflow, tmp_path, monkeypatch, trainer_class, stage: str, **overrides):
    """A real trainer on the smoke run's preprocessed data, built the way nnUNetv2_train builds it."""
    from dataclasses import replace

    from batchgenerators.utilities.file_and_folder_operations import load_json

    root = smoke_workflow / "results" / "nnunet"
    dataset = "Dataset501_PancreasQuiz"
    monkeypatch.setenv("nnUNet_raw", str(root / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(root / "preprocessed"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "trained"))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # the loader runs in this process
    settings = replace(
        stage_settings(
            schema_default_training(),
            stage,
            case_table=str(smoke_workflow / "results" / "dataset" / dataset / "case_table.csv"),
        ),
        **overrides,
    )
    monkeypatch.setenv(SETTINGS_ENV, str(settings.write(tmp_path / f"settings_{len(list(tmp_path.iterdir()))}.json")))
    plans = load_json(str(root / "preprocessed" / dataset / "nnUNetResEncUNetMPlans.json"))
    plans["continue_training"] = False
    dataset_json = load_json(str(root / "preprocessed" / dataset / "dataset.json"))
    return trainer_class(plans, "3d_cpu_demo", 0, dataset_json, device=torch.device("cpu"))


@pytest.mark.slow
def test_the_stock_budget_trainer_is_nnunets_trainer_but_for_its_budget(smoke_workflow, tmp_path, monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    stock = _smoke_trainer(
        smoke_workflow,
        tmp_path,
        monkeypatch,
        trainers.nnUNetTrainerStockBudget,
        "stage1",
        num_epochs=7,
        iterations_per_epoch=11,
        val_iterations_per_epoch=3,
        initial_lr=0.5,  # a project setting: the stock trainer ignores it
        optimizer="adamw",
    )
    plain = _smoke_trainer(smoke_workflow, tmp_path, monkeypatch, nnUNetTrainer, "stage1")
    assert (stock.num_epochs, stock.num_iterations_per_epoch, stock.num_val_iterations_per_epoch) == (7, 11, 3)
    # the budget, and what names the trainer's class (its output folder and log file)
    budget = {"num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch", "settings", "output_folder"}
    budget |= {"output_folder_base", "log_file"}
    ours, theirs = vars(stock), vars(plain)
    for key in set(theirs) - budget:
        if isinstance(theirs[key], (int, float, str, bool, tuple, type(None))):
            assert ours[key] == theirs[key], key
    assert stock.initial_lr == 1e-2 and stock.oversample_foreground_percent == 0.33
    stock.initialize()
    assert isinstance(stock.optimizer, torch.optim.SGD)


@pytest.mark.slow
def test_foreground_oversampling_means_its_probability_at_batch_size_two(smoke_workflow, tmp_path, monkeypatch):
    """Defect: nnU-Net forces the last round(batch * (1 - p)) samples, so at batch 2 p = 0.33 forced one of two."""
    trainer = _smoke_trainer(
        smoke_workflow,
        tmp_path,
        monkeypatch,
        trainers.nnUNetTrainerPancreasSeg,
        "stage1",
        oversample_foreground_percent=0.33,
    )
    trainer.initialize()
    assert trainer.batch_size == 2
    train_loader, _ = trainer.get_dataloaders()
    loader = train_loader.data_loader
    np.random.seed(0)
    forced = [loader.get_do_oversample(j) for _ in range(3000) for j in range(trainer.batch_size)]
    assert np.mean(forced) == pytest.approx(0.33, abs=0.02)


@pytest.mark.slow
def test_lesion_centred_sampling_puts_the_lesion_in_the_forced_patches(smoke_workflow, tmp_path, monkeypatch):
    """Defect: the forced-foreground crop centred on pancreas or lesion at random, so with patches smaller than
    the volume many carried the case's subtype without its lesion. Measured with nnU-Net's own loader on the
    smoke data, every patch forced and a patch much smaller than a case."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

    from pancreas_mtl.training.sampling import (
        LesionCentredSampling,
        lesion_voxels_per_sample,
    )

    trainer = _smoke_trainer(smoke_workflow, tmp_path, monkeypatch, trainers.nnUNetTrainerPancreasSeg, "stage1")
    trainer.initialize()
    dataset_tr, _ = trainer.get_tr_and_val_datasets()
    assert isinstance(dataset_tr, LesionCentredSampling)

    def lesion_share(share: float) -> float:
        loader = nnUNetDataLoader(
            LesionCentredSampling(dataset_tr.dataset, share),
            2,
            (4, 8, 8),
            (4, 8, 8),
            trainer.label_manager,
            oversample_foreground_percent=1.0,
            probabilistic_oversampling=True,
        )
        np.random.seed(1)
        voxels = torch.cat(
            [lesion_voxels_per_sample(next(loader)["target"], trainer.label_manager) for _ in range(150)]
        )
        return (voxels > 0).float().mean().item()

    assert lesion_share(1.0) == 1.0
    assert lesion_share(0.0) < 0.9


@pytest.mark.slow
def test_the_training_seed_fixes_the_initial_weights(smoke_workflow, tmp_path, monkeypatch):
    def initial_weights(seed: int) -> dict:
        trainer = _smoke_trainer(
            smoke_workflow,
            tmp_path,
            monkeypatch,
            trainers.nnUNetTrainerPancreasSeg,
            "stage1",
            seed=seed,
            sampling_seed=seed,
        )
        trainer.initialize()
        return {k: v.clone() for k, v in trainer.plain_network().state_dict().items()}

    first, again, other = initial_weights(3), initial_weights(3), initial_weights(4)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.slow
def test_resume_falls_back_from_a_torn_latest_and_drops_best_checkpoints_of_abandoned_epochs(
    smoke_workflow, tmp_path, monkeypatch
):
    """A kill during nnU-Net's plain torch.save left an unreadable checkpoint_latest.pth that every rerun failed
    on; and a best checkpoint written after the resumed epoch stayed on disk, used for inference unless beaten."""
    from pathlib import Path

    trainer = _smoke_trainer(smoke_workflow, tmp_path, monkeypatch, trainers.nnUNetTrainerPancreasSeg, "stage1")
    trainer.initialize()
    out = Path(trainer.output_folder)
    latest, best = out / "checkpoint_latest.pth", out / "checkpoint_best_combined.pth"
    for epoch in (2, 3):  # nnU-Net stores current_epoch + 1: 3, then 4 (and 3 is kept as the previous)
        trainer.current_epoch = epoch
        trainer.save_checkpoint(str(latest))
    trainer.current_epoch = 4
    trainer.save_checkpoint(str(best))  # an epoch after the last latest checkpoint: abandoned by a crash
    assert not list(out.glob("*.partial"))
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])

    resumed = _smoke_trainer(smoke_workflow, tmp_path, monkeypatch, trainers.nnUNetTrainerPancreasSeg, "stage1")
    resumed.load_checkpoint(str(latest))
    assert resumed.current_epoch == 3  # the previous checkpoint
    assert not best.exists() and resumed.checkpoint_selector.best["combined"] == -math.inf
    log = Path(resumed.log_file).read_text()
    assert "checkpoint_latest.pth cannot be read" in log and "checkpoint_latest.previous.pth instead" in log


@pytest.mark.slow
def test_a_stopped_wandb_service_ends_wandb_logging_not_the_training(smoke_workflow, tmp_path, monkeypatch):
    """Defect (found on the SLURM test cluster): a time limit's SIGTERM reaches every process of the job, W&B's
    service process too; the trainer's next W&B call raised ConnectionResetError and the training died with exit
    code 1 instead of stopping in its epoch."""
    monkeypatch.setenv("nnUNet_wandb_enabled", "1")
    monkeypatch.setenv("nnUNet_wandb_mode", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # wandb.init names its service in os.environ (WANDB_SERVICE) for child processes: the service this test stops
    # must not be handed to the trainings of later tests, so the variable is restored (removed) afterwards
    monkeypatch.setenv("WANDB_SERVICE", "")
    monkeypatch.delenv("WANDB_SERVICE")
    trainer = _smoke_trainer(smoke_workflow, tmp_path, monkeypatch, trainers.nnUNetTrainerPancreasSeg, "stage1")
    try:
        _stop_the_wandb_service_under(trainer)
    finally:
        import wandb

        try:
            wandb.teardown()  # this process's W&B setup, whose service is gone
        except Exception:
            pass


def _stop_the_wandb_service_under(trainer) -> None:
    import signal
    from pathlib import Path

    import psutil

    trainer.logger.log("train_losses", 0.9, 0)  # W&B works
    services = [p for p in psutil.Process().children(recursive=True) if "wandb" in " ".join(p.cmdline())]
    assert services, "no W&B service process: nothing to test"
    for service in services:
        service.send_signal(signal.SIGTERM)
    psutil.wait_procs(services, timeout=30)
    for epoch in (1, 2):
        trainer.logger.log("train_losses", 0.8, epoch)
    assert trainer.logger.get_value("train_losses", step=None) == [0.9, 0.8, 0.8]  # nnU-Net's own log goes on
    log = Path(trainer.log_file).read_text()
    assert log.count("WandbLogger stopped logging") == 1, log[-2000:]


STOP_REQUEST_SCRIPT = """
import multiprocessing, os, signal, sys, time
from pancreas_mtl.training.trainers import StopRequest

request = StopRequest()
request.install()
worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,), daemon=True)
worker.start()
print(worker.pid, flush=True)
os.kill(worker.pid, signal.SIGTERM)  # as a scheduler signals every process of the job
request.active = True
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(0.5)
print(worker.is_alive(), request.requested, flush=True)
request.active = False  # outside the training loop: the signal ends the trainer and its workers
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(5)
print("still running", flush=True)
"""


@pytest.mark.slow  # imports the trainers in a fresh interpreter: about 15 s
def test_sigterm_asks_the_training_loop_to_stop_and_spares_its_workers():
    """Defect (found on the SLURM test cluster): the augmentation workers died on the job's SIGTERM, so a trainer
    waiting for a batch ended with nnU-Net's 'background workers are no longer alive' instead of stopping in its
    epoch. A worker now ignores it; the trainer stops at its next check, or, outside its loop, ends itself and its
    workers."""
    import subprocess
    import sys
    import time

    import psutil

    run = subprocess.run([sys.executable, "-c", STOP_REQUEST_SCRIPT], capture_output=True, text=True, timeout=60)
    lines = run.stdout.split("\n")
    assert run.returncode == -15, run.stdout + run.stderr  # ended by SIGTERM, after the loop
    assert lines[1] == "True True", run.stdout + run.stderr  # the worker survived it; the stop was asked for
    assert "still running" not in run.stdout
    worker, deadline = int(lines[0]), time.monotonic() + 10
    while psutil.pid_exists(worker) and psutil.Process(worker).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the worker outlived its trainer"
        time.sleep(0.1)
