"""nnU-Net trainers of the two training stages, found by ``nnUNetv2_train -tr`` through ``nnUNet_extTrainer``.

- :class:`nnUNetTrainerPancreasSeg` (stage 1): nnU-Net's segmentation training with the workflow's settings,
  plus full-volume validation every N epochs (whole-pancreas and lesion Dice) and a best-combined checkpoint.
- :class:`nnUNetTrainerPancreasMultiTask` (stage 2, ROI-attention head) and
  :class:`nnUNetTrainerPancreasMultiTaskGlobalPool` (plain global pooling head): load the stage-1 weights
  themselves (nnU-Net's ``-pretrained_weights`` refuses a model with extra keys), then train segmentation and
  subtype classification jointly; every training patch carries its case's subtype. Full-volume validation adds
  macro-F1 and the best-F1 checkpoint.

Hyperparameters come from :class:`~pancreas_mtl.model.training_settings.TrainingSettings`; anything that changes
the network's shape is a class attribute, so ``nnUNetv2_predict`` rebuilds the same network from the class name.
"""

from __future__ import annotations

import csv
import json
import math
from os.path import join
from pathlib import Path

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from sklearn.metrics import f1_score
from torch import autocast, nn
from torch._dynamo import OptimizedModule

from pancreas_mtl.model.network import MultiTaskUNet, build_multitask_network
from pancreas_mtl.model.sliding_window import dice, predict_volume_multitask
from pancreas_mtl.model.training_settings import CHECKPOINT_FILES, TrainingSettings

NUM_SUBTYPES = 3
# Which checkpoint keeps the best value of each selection score.
SCORE_CHECKPOINTS = {"combined": CHECKPOINT_FILES["best_combined"], "macro_f1": CHECKPOINT_FILES["best_f1"]}
FULL_VALIDATION_HISTORY = "full_validation_history.json"


def read_case_subtypes(case_table: str | Path) -> dict[str, int]:
    """case_id -> subtype for every case of the conversion's case table that has one."""
    with open(case_table, newline="") as handle:
        return {row["case_id"]: int(row["subtype"]) for row in csv.DictReader(handle) if row["subtype"] != ""}


def class_weights_from_counts(subtypes: list[int], num_classes: int = NUM_SUBTYPES) -> torch.Tensor:
    """Inverse-frequency weights N / (K * n_k), so each class contributes equally to the loss."""
    counts = np.bincount(np.asarray(subtypes, dtype=int), minlength=num_classes).astype(float)
    if (counts == 0).any():
        raise ValueError(f"every subtype needs training cases for class weighting; counts per subtype: {counts}")
    return torch.tensor(counts.sum() / (num_classes * counts), dtype=torch.float32)


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017) with optional per-class weights."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(logits, dim=1)
        log_pt = log_probs.gather(1, target[:, None])[:, 0]
        loss = -((1 - log_pt.exp()) ** self.gamma) * log_pt
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum()
        return loss.mean()


class PolyLRPerParamGroup:
    """nnU-Net's poly schedule, applied to each parameter group's own base learning rate.

    (nnU-Net's PolyLRScheduler sets one learning rate for all groups, which would erase the head's factor.)
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_steps: int, exponent: float = 0.9):
        self.optimizer = optimizer
        self.max_steps = max_steps
        self.exponent = exponent
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.ctr = 0

    def step(self, current_step: int | None = None) -> None:
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        factor = (1 - current_step / self.max_steps) ** self.exponent
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]


class CheckpointSelector:
    """Remembers the best value of each selection score; improvements are strict (the earliest best wins)."""

    def __init__(self, scores: tuple[str, ...]):
        self.best = {score: -math.inf for score in scores}

    def update(self, metrics: dict[str, float]) -> list[str]:
        improved = []
        for score, best in self.best.items():
            value = metrics.get(score)
            if value is not None and not math.isnan(value) and value > best:
                self.best[score] = value
                improved.append(score)
        return improved

    def restore(self, history: list[dict]) -> None:
        """Rebuild the best values from the full-validation history (used when a training resumes)."""
        for entry in history:
            self.update(entry)


class nnUNetTrainerPancreasSeg(nnUNetTrainer):
    """Stage 1: segmentation only, nnU-Net's loss and augmentation, with the workflow's settings."""

    multitask = False
    selection_scores: tuple[str, ...] = ("combined",)

    def __init__(
        self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = torch.device("cuda")
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.settings = TrainingSettings.from_environment()
        s = self.settings
        self.num_epochs = s.num_epochs
        self.num_iterations_per_epoch = s.iterations_per_epoch
        self.num_val_iterations_per_epoch = s.val_iterations_per_epoch
        self.initial_lr = s.initial_lr
        self.oversample_foreground_percent = s.oversample_foreground_percent
        self.save_every = s.checkpoint_every
        for key in self._extra_log_keys():
            self.logger.local_logger.my_fantastic_logging.setdefault(key, [])
        self.checkpoint_selector = CheckpointSelector(self.selection_scores)
        self.full_validation_history: list[dict] = []
        self.print_to_log_file(f"pancreas_mtl training settings: {json.dumps(s.__dict__)}")

    # ------------------------------------------------------------------ settings hooks
    def _extra_log_keys(self) -> list[str]:
        return ["full_val_whole_dice", "full_val_lesion_dice", "full_val_combined"]

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        cap = self.settings.batch_size_cap
        if cap is not None and self.batch_size > cap:
            self.print_to_log_file(f"batch size capped from {self.batch_size} to {cap}")
            self.batch_size = cap

    def plain_network(self) -> nn.Module:
        """The network without DDP / torch.compile wrappers."""
        net = self.network.module if self.is_ddp else self.network
        return net._orig_mod if isinstance(net, OptimizedModule) else net

    # ------------------------------------------------------------------ full-volume validation
    def _is_full_validation_epoch(self) -> bool:
        every = max(1, self.settings.full_validation_every)
        return (self.current_epoch + 1) % every == 0 or self.current_epoch == self.num_epochs - 1

    def run_full_validation(self) -> dict[str, float]:
        """Sliding-window prediction over every validation volume (preprocessed space)."""
        net = self.plain_network()
        was_training = net.training
        net.eval()
        self.set_deep_supervision_enabled(False)
        _, val_keys = self.do_split()
        dataset = self.dataset_class(
            self.preprocessed_dataset_folder, val_keys,
            folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage,
        )
        mirror_axes = self.inference_allowed_mirroring_axes if self.settings.full_validation_mirroring else None
        whole, lesion, predicted, truth = [], [], [], []
        try:
            with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
                for key in val_keys:
                    data, seg, _, _ = dataset.load_case(key)
                    prediction = predict_volume_multitask(
                        net, torch.from_numpy(np.asarray(data[:])), tuple(self.configuration_manager.patch_size),
                        tile_step_size=self.settings.full_validation_tile_step, mirror_axes=mirror_axes,
                        device=self.device, with_classification=self.multitask,
                    )
                    labels = prediction.seg_logits.argmax(0).numpy()
                    reference = np.asarray(seg[:])[0]
                    whole.append(dice(labels > 0, reference > 0))
                    lesion.append(dice(labels == 2, reference == 2))
                    if self.multitask:
                        predicted.append(int(prediction.class_probabilities.argmax()))
                        truth.append(self.case_subtypes[key])
        finally:
            self.set_deep_supervision_enabled(self.enable_deep_supervision)
            net.train(was_training)
        metrics = {"whole_dice": float(np.mean(whole)), "lesion_dice": float(np.mean(lesion))}
        if self.multitask:
            metrics["macro_f1"] = float(
                f1_score(truth, predicted, labels=list(range(NUM_SUBTYPES)), average="macro", zero_division=0)
            )
        metrics["combined"] = self.combined_score(metrics)
        return metrics

    @staticmethod
    def combined_score(metrics: dict[str, float]) -> float:
        """Mean of whole-pancreas and lesion Dice; with classification, averaged 50/50 with macro-F1."""
        seg = (metrics["whole_dice"] + metrics["lesion_dice"]) / 2
        return (seg + metrics["macro_f1"]) / 2 if "macro_f1" in metrics else seg

    def _log_epoch_value(self, key: str, value: float | None) -> None:
        """One value per epoch for the local logger (NaN when not measured); W&B only gets measured values."""
        if value is None:
            self.logger.local_logger.log(key, float("nan"), self.current_epoch)
        else:
            self.logger.log(key, value, self.current_epoch)

    def on_epoch_end(self):
        metrics = None
        if self.local_rank == 0 and self._is_full_validation_epoch():
            metrics = self.run_full_validation()
            metrics["epoch"] = self.current_epoch
            self.full_validation_history.append(metrics)
            Path(self.output_folder, FULL_VALIDATION_HISTORY).write_text(
                json.dumps(self.full_validation_history, indent=2)
            )
            self.print_to_log_file(
                "full validation: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "epoch")
            )
        self._log_epoch_value("full_val_whole_dice", metrics and metrics["whole_dice"])
        self._log_epoch_value("full_val_lesion_dice", metrics and metrics["lesion_dice"])
        self._log_epoch_value("full_val_combined", metrics and metrics["combined"])
        if self.multitask:
            self._log_epoch_value("full_val_macro_f1", metrics and metrics["macro_f1"])
        if metrics is not None:
            for score in self.checkpoint_selector.update(metrics):
                self.print_to_log_file(f"new best {score}: {metrics[score]:.4f} (epoch {self.current_epoch})")
                self.save_checkpoint(join(self.output_folder, SCORE_CHECKPOINTS[score]))
        super().on_epoch_end()

    def load_checkpoint(self, filename_or_checkpoint):
        super().load_checkpoint(filename_or_checkpoint)
        history_file = Path(self.output_folder, FULL_VALIDATION_HISTORY)
        if history_file.is_file():
            # Entries after the checkpoint's epoch were never saved in a checkpoint; they will be recomputed.
            history = [e for e in json.loads(history_file.read_text()) if e["epoch"] < self.current_epoch]
            self.full_validation_history = history
            self.checkpoint_selector.restore(history)
            self.print_to_log_file(f"resumed at epoch {self.current_epoch}; best so far: {self.checkpoint_selector.best}")


class nnUNetTrainerPancreasMultiTask(nnUNetTrainerPancreasSeg):
    """Stage 2: shared encoder, nnU-Net decoder and the ROI-attention subtype head, trained jointly."""

    multitask = True
    selection_scores = ("combined", "macro_f1")
    head_variant = "roi_attention"
    head_hidden = 128

    def _extra_log_keys(self) -> list[str]:
        return super()._extra_log_keys() + ["full_val_macro_f1", "train_seg_loss", "train_cls_loss", "cls_loss_weight"]

    @classmethod
    def build_network_architecture(
        cls, plans_manager, configuration_manager, num_input_channels, num_output_channels,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        return build_multitask_network(
            plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision,
            head_variant=cls.head_variant, num_classes=NUM_SUBTYPES, hidden=cls.head_hidden,
            dropout=TrainingSettings.from_environment().head_dropout,
        )

    def initialize(self):
        super().initialize()
        s = self.settings
        if s.case_table is None:
            raise RuntimeError("stage-2 training needs the case table (settings.case_table) for the subtypes")
        self.case_subtypes = read_case_subtypes(s.case_table)
        train_keys, val_keys = self.do_split()
        missing = sorted(k for k in [*train_keys, *val_keys] if k not in self.case_subtypes)
        if missing:
            raise RuntimeError(f"no subtype in {s.case_table} for: {', '.join(missing[:10])}")
        weight = class_weights_from_counts([self.case_subtypes[k] for k in train_keys]) if s.class_weighting else None
        if s.classification_loss == "focal":
            self.classification_loss = FocalLoss(s.focal_gamma, weight).to(self.device)
        else:
            self.classification_loss = nn.CrossEntropyLoss(weight=weight).to(self.device)
        self.print_to_log_file(f"classification loss {s.classification_loss}, class weights {weight}")
        self.load_stage1_weights()

    def load_stage1_weights(self) -> dict:
        path = self.settings.stage1_checkpoint
        if path is None:
            raise RuntimeError("stage-2 training starts from stage-1 weights: settings.stage1_checkpoint is not set")
        report = self.plain_network().load_segmentation_weights(path)
        self.print_to_log_file(
            f"loaded {len(report['loaded'])} stage-1 tensors from {path}; newly initialised head tensors: "
            f"{len(report['head_initialised'])}; ignored checkpoint tensors: {report['unexpected']}"
        )
        return report

    def configure_optimizers(self):
        """AdamW with two parameter groups: the pretrained encoder/decoder at ``initial_lr`` and the new head at
        ``initial_lr * head_lr_factor``, with nnU-Net's poly decay per group.

        Stage 2 fine-tunes a trained network next to a freshly initialised head: nnU-Net's SGD with momentum
        0.99 let the young head's large, noisy gradients wreck the pretrained encoder (measured on the demo
        data: segmentation loss rising, classification stuck at chance); AdamW at a small rate does not.
        """
        net = self.plain_network()
        assert isinstance(net, MultiTaskUNet)
        head_params = list(net.classification_head.parameters())
        head_ids = {id(p) for p in head_params}
        shared_params = [p for p in net.parameters() if id(p) not in head_ids]
        optimizer = torch.optim.AdamW(
            [
                {"params": shared_params, "lr": self.initial_lr},
                {"params": head_params, "lr": self.initial_lr * self.settings.head_lr_factor},
            ],
            self.initial_lr, weight_decay=1e-4,
        )
        return optimizer, PolyLRPerParamGroup(optimizer, self.num_epochs)

    def classification_loss_weight(self) -> float:
        """Linear warm-up of the classification loss weight over the first epochs."""
        s = self.settings
        if s.classification_warmup_epochs <= 0:
            return s.classification_loss_weight
        return s.classification_loss_weight * min(1.0, (self.current_epoch + 1) / s.classification_warmup_epochs)

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) else \
            target.to(self.device, non_blocking=True)
        subtypes = torch.as_tensor([self.case_subtypes[k] for k in batch["keys"]], device=self.device)
        cls_weight = self.classification_loss_weight()

        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            seg, logits = self.network(data, return_class_logits=True)
            seg_loss = self.loss(seg, target)
            cls_loss = self.classification_loss(logits.float(), subtypes)
            loss = seg_loss + cls_weight * cls_loss

        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return {
            "loss": loss.detach().cpu().numpy(),
            "seg_loss": seg_loss.detach().cpu().numpy(),
            "cls_loss": cls_loss.detach().cpu().numpy(),
        }

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        self.logger.log("train_seg_loss", float(np.mean([o["seg_loss"] for o in train_outputs])), self.current_epoch)
        self.logger.log("train_cls_loss", float(np.mean([o["cls_loss"] for o in train_outputs])), self.current_epoch)
        self.logger.log("cls_loss_weight", self.classification_loss_weight(), self.current_epoch)


class nnUNetTrainerPancreasMultiTaskGlobalPool(nnUNetTrainerPancreasMultiTask):
    """Stage 2 with the plain global-pooling head, for comparison with the ROI-attention head."""

    head_variant = "global_pool"
