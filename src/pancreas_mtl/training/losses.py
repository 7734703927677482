"""Losses and the learning-rate schedule of the stage-2 (multi-task) training."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pancreas_mtl.data.labels import NUM_SUBTYPES


def class_weights_from_counts(subtypes: list[int], num_classes: int = NUM_SUBTYPES) -> torch.Tensor:
    """Inverse-frequency weights N / (K * n_k), so each class contributes equally to the loss."""
    counts = np.bincount(np.asarray(subtypes, dtype=int), minlength=num_classes).astype(float)
    if (counts == 0).any():
        raise ValueError(f"every subtype needs training cases for class weighting; counts per subtype: {counts}")
    return torch.tensor(counts.sum() / (num_classes * counts), dtype=torch.float32)


class SubtypeLoss(nn.Module):
    """Subtype classification loss: per sample cross-entropy (``gamma`` 0) or focal loss (Lin et al. 2017),
    times the sample's class weight, averaged over the samples that count.

    The weights multiply each sample's loss and the mean runs over samples, not over weights: torch's
    ``CrossEntropyLoss(weight=w)`` divides by the batch's summed weights, which mostly cancels the weighting
    (with one sample per GPU, entirely). The weights N / (K n_k) average 1 over the training set.

    ``counts`` (optional, one 0/1 value per sample): which samples count, e.g. those whose patch holds the
    lesion; the mean runs over them, and a batch where none counts gives a zero loss (still differentiable).

    ``across_ranks`` (DDP training): the mean runs over the samples that count on every rank, as it would over
    the joined batch in one process. DDP averages the ranks' gradients, so each rank divides its sum by the
    count of all ranks over their number; a per-rank mean would give a counting sample on a rank whose
    neighbours count none half its weight (two ranks, one sample each). Every rank must then call the loss
    at every step (an all-reduce of the counts), as DDP's own backward requires anyway.
    """

    def __init__(self, gamma: float = 0.0, weight: torch.Tensor | None = None, across_ranks: bool = False):
        super().__init__()
        self.gamma = gamma
        self.across_ranks = across_ranks
        self.register_buffer("weight", weight)

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(logits, target, reduction="none")  # -log p_t
        if self.gamma:
            loss = (1 - torch.exp(-loss)) ** self.gamma * loss
        if self.weight is not None:
            loss = loss * self.weight[target]
        return loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.per_sample(logits, target)
        if counts is None:
            return loss.mean()
        counts = counts.to(loss.dtype)
        counted = counts.sum()
        ranks = 1
        if self.across_ranks and dist.is_available() and dist.is_initialized():
            counted = counted.detach().clone()
            dist.all_reduce(counted)
            ranks = dist.get_world_size()
        return (loss * counts).sum() * ranks / counted.clamp_min(1)


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
