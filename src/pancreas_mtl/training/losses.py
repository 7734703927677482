"""Losses and the learning-rate schedule of the stage-2 (multi-task) training."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pancreas_mtl.data.labels import NUM_SUBTYPES


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
