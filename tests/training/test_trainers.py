"""Trainer pieces without a training run, and the trainers on a real preprocessed smoke dataset."""


import pytest
import torch

from pancreas_mtl.config import config_problems, load_schema
from pancreas_mtl.nnunet.trainer_names import STAGE1_TRAINER, STAGE2_TRAINERS
from pancreas_mtl.training import trainers
from pancreas_mtl.training.losses import FocalLoss, PolyLRPerParamGroup, class_weights_from_counts
from pancreas_mtl.training.selection import CheckpointSelector
from pancreas_mtl.training.settings import SETTINGS_ENV, TrainingSettings, stage_settings
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
            assert getattr(settings, key) == value, (stage, key)
    assert stage_settings(training, "stage1").head_dropout is None


def test_trainer_classes_carry_the_names_the_workflow_uses():
    assert trainers.nnUNetTrainerPancreasSeg.__name__ == STAGE1_TRAINER
    for head, name in STAGE2_TRAINERS.items():
        assert getattr(trainers, name).head_variant == head


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
    settings = stage_settings(
        schema_default_training(), "stage2", stage1_checkpoint=str(stage1_file),
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
