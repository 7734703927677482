"""Full-volume sliding-window prediction of both heads from one encoder pass per tile.

Used by the trainers' full-volume validation; the inference package's predictor subclass reuses the
tile-level class aggregation. Tile class logits are averaged with weights given by the predicted lesion
probability mass inside each tile (ROI-aware): a tile that sees no lesion barely votes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

LESION_LABEL = 2
# A tile with no predicted lesion still votes a little, so a case without lesion gets a defined answer.
MIN_TILE_WEIGHT = 1e-3


@dataclass
class VolumePrediction:
    seg_logits: torch.Tensor  # (num_seg_classes, *spatial), float32, on CPU
    class_probabilities: torch.Tensor  # (num_classes,), float32, on CPU


def roi_weighted_class_probabilities(tile_class_logits: torch.Tensor, tile_lesion_mass: torch.Tensor) -> torch.Tensor:
    """Average of tile softmax probabilities weighted by each tile's predicted lesion probability mass."""
    weights = tile_lesion_mass.float().clamp_min(0) + MIN_TILE_WEIGHT
    probs = torch.softmax(tile_class_logits.float(), dim=1)
    return (probs * weights[:, None]).sum(0) / weights.sum()


def mirror_combinations(mirror_axes: tuple[int, ...] | None) -> list[tuple[int, ...]]:
    """Every subset of the spatial mirror axes (as tensor dims of a (B, C, *spatial) batch), identity first."""
    axes = [a + 2 for a in (mirror_axes or ())]
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


@torch.inference_mode()
def predict_volume_multitask(
    network: torch.nn.Module,
    volume: torch.Tensor,
    patch_size: tuple[int, ...],
    tile_step_size: float = 0.5,
    mirror_axes: tuple[int, ...] | None = None,
    device: torch.device | str = "cpu",
    with_classification: bool = True,
) -> VolumePrediction:
    """Both heads over a preprocessed volume (C, *spatial) with Gaussian-weighted tiles, as nnU-Net does.

    ``with_classification=False`` runs a plain segmentation network; ``class_probabilities`` is then empty.
    """
    device = torch.device(device)
    volume = torch.as_tensor(np.asarray(volume)) if not isinstance(volume, torch.Tensor) else volume
    data, slicer_revert = pad_nd_image(volume, patch_size, "constant", {"value": 0}, True, None)
    spatial = data.shape[1:]
    steps = compute_steps_for_sliding_window(spatial, patch_size, tile_step_size)
    gaussian = compute_gaussian(tuple(patch_size), sigma_scale=1.0 / 8, value_scaling_factor=10, device=device)
    gaussian = gaussian.float()

    seg_sum = None
    weight_sum = torch.zeros(spatial, dtype=torch.float32, device=device)
    tile_logits, tile_mass = [], []
    for start in itertools.product(*steps):
        slicer = tuple(slice(s, s + p) for s, p in zip(start, patch_size))
        tile = data[(slice(None), *slicer)][None].to(device, dtype=torch.float32)
        seg_acc, cls_acc = None, None
        combos = mirror_combinations(mirror_axes)
        for axes in combos:
            x = torch.flip(tile, axes) if axes else tile
            if with_classification:
                seg, logits = network(x, return_class_logits=True)
                cls_acc = logits if cls_acc is None else cls_acc + logits
            else:
                seg = network(x)
            seg = torch.flip(seg, axes) if axes else seg
            seg_acc = seg if seg_acc is None else seg_acc + seg
        seg_tile = (seg_acc / len(combos))[0].float()
        if seg_sum is None:
            seg_sum = torch.zeros((seg_tile.shape[0], *spatial), dtype=torch.float32, device=device)
        seg_sum[(slice(None), *slicer)] += seg_tile * gaussian
        weight_sum[slicer] += gaussian
        if with_classification:
            tile_logits.append((cls_acc / len(combos))[0])
            tile_mass.append(torch.softmax(seg_tile, 0)[LESION_LABEL].sum())

    seg_logits = (seg_sum / weight_sum)[(slice(None), *slicer_revert[1:])]
    if with_classification:
        class_probs = roi_weighted_class_probabilities(torch.stack(tile_logits), torch.stack(tile_mass))
    else:
        class_probs = torch.empty(0)
    return VolumePrediction(seg_logits.cpu(), class_probs.cpu())


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty (nothing to find, nothing found)."""
    intersection = np.logical_and(prediction, reference).sum()
    total = prediction.sum() + reference.sum()
    return 1.0 if total == 0 else float(2.0 * intersection / total)
