"""Trainer pieces without a training run, and the trainers on a real preprocessed smoke dataset."""


import pytest
import torch

from pancreas_mtl.model.trainers import (
    CheckpointSelector,
    FocalLoss,
    PolyLRPerParamGroup,
    class_weights_from_counts,
    nnUNetTrainerPancreasMultiTask,
    read_case_subtypes,
)
from pancreas_mtl.model.training_settings import SETTINGS_ENV, TrainingSettings


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


def test_focal_loss_with_gamma_zero_is_weighted_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    weight = torch.tensor([1.0, 2.0, 0.5])
    expected = torch.nn.functional.cross_entropy(logits, target, weight=weight)
    assert torch.allclose(FocalLoss(0.0, weight)(logits, target), expected)
    assert FocalLoss(2.0)(logits, target) < torch.nn.functional.cross_entropy(logits, target)


def test_poly_schedule_keeps_each_groups_ratio():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [a], "lr": 0.01}, {"params": [b], "lr": 0.1}], lr=0.01)
    schedule = PolyLRPerParamGroup(optimizer, max_steps=10)
    schedule.step(5)
    lr_a, lr_b = schedule.get_last_lr()
    assert lr_a == pytest.approx(0.01 * 0.5**0.9)
    assert lr_b / lr_a == pytest.approx(10)


def test_settings_reject_unknown_keys_and_bad_loss(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown training settings: epochs"):
        TrainingSettings.from_dict({"epochs": 3})
    with pytest.raises(ValueError, match="classification_loss"):
        TrainingSettings(classification_loss="hinge")
    path = TrainingSettings(num_epochs=3).write(tmp_path / "s.json")
    monkeypatch.setenv(SETTINGS_ENV, str(path))
    assert TrainingSettings.from_environment().num_epochs == 3
    monkeypatch.delenv(SETTINGS_ENV)
    assert TrainingSettings.from_environment() == TrainingSettings()


@pytest.mark.slow
def test_stage2_trainer_lands_stage1_weights_exactly(smoke_workflow, tmp_path, monkeypatch):
    """A real stage-2 trainer, built the way nnUNetv2_train builds it, copies every stage-1 tensor."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    root = smoke_workflow / "results" / "nnunet"
    dataset = "Dataset501_PancreasQuiz"
    stage1_folder = root / "trained" / dataset / "nnUNetTrainerPancreasSeg__nnUNetResEncUNetMPlans__3d_cpu_demo" / "fold_0"
    stage1_file = stage1_folder / "checkpoint_best_combined.pth"
    monkeypatch.setenv("nnUNet_raw", str(root / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(root / "preprocessed"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "trained"))  # the trainer's own folder: not the smoke run's
    settings = TrainingSettings(
        case_table=str(smoke_workflow / "results" / "dataset" / "case_table.csv"), stage1_checkpoint=str(stage1_file)
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
