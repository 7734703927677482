"""Synthetic inputs of the report tests, written as real files: nnU-Net training logs and checkpoints,
CT-like volumes with labels, per-case metric tables, benchmark results; and a PNG check."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pandas as pd
import torch


def nnunet_logging(n_epochs: int, multitask: bool, every: int = 5, seed: int = 0) -> dict:
    """A per-epoch logging dict like ``checkpoint["logging"]``; full-validation keys NaN between measurements."""
    rng = np.random.default_rng(seed)
    epochs = np.arange(n_epochs)
    decay = np.exp(-epochs / max(1, n_epochs / 3))
    full = [(e + 1) % every == 0 or e == n_epochs - 1 for e in epochs]

    def sparse(values):
        return [float(v) if f else math.nan for v, f in zip(values, full)]

    pseudo = list(np.clip(0.85 - 0.6 * decay + rng.normal(0, 0.04, n_epochs), 0, 1))
    ema = [pseudo[0]]
    for v in pseudo[1:]:
        ema.append(0.9 * ema[-1] + 0.1 * v)
    start = 1_700_000_000 + 30.0 * epochs
    log = {
        "train_losses": list(-0.6 + 0.9 * decay + rng.normal(0, 0.02, n_epochs)),
        "val_losses": list(-0.5 + 0.9 * decay + rng.normal(0, 0.04, n_epochs)),
        "mean_fg_dice": pseudo,
        "ema_fg_dice": ema,
        "lrs": list(0.01 * (1 - epochs / n_epochs) ** 0.9),
        "epoch_start_timestamps": list(start),
        "epoch_end_timestamps": list(start + 25 + rng.uniform(0, 3, n_epochs)),
        "full_val_whole_dice": sparse(0.85 - 0.5 * decay),
        "full_val_lesion_dice": sparse(0.6 - 0.5 * decay),
    }
    log["full_val_combined"] = sparse(
        (np.asarray(log["full_val_whole_dice"]) + np.asarray(log["full_val_lesion_dice"])) / 2
    )
    if multitask:
        log["full_val_macro_f1"] = sparse(0.7 - 0.4 * decay)
        log["train_seg_loss"] = list(np.asarray(log["train_losses"]) - 0.1)
        log["train_cls_loss"] = list(0.3 + 0.8 * decay)
        log["cls_loss_weight"] = list(np.minimum(1.0, (epochs + 1) / (n_epochs / 2)) * 0.5)
    return log


def write_checkpoint(path: Path, logging: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"logging": logging, "current_epoch": len(logging["train_losses"])}, path)
    return path


def lps_affine(spacing=(0.8, 0.8, 2.5)) -> np.ndarray:
    sx, sy, sz = spacing
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = (100.0, 80.0, -300.0)
    return affine


def synthetic_case(shape=(64, 64, 10), seed=0, lesion_slice=6) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume (body, fat, soft tissue) with a pancreas ellipse and a lesion peaking at ``lesion_slice``."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    cx, cy = shape[0] / 2, shape[1] / 2
    image = np.full(shape, -1000.0)
    body = ((x - cx) / (0.45 * shape[0])) ** 2 + ((y - cy) / (0.38 * shape[1])) ** 2 <= 1
    image[body] = -90
    image[((x - cx) / (0.35 * shape[0])) ** 2 + ((y - cy) / (0.28 * shape[1])) ** 2 <= 1] = 45
    image += rng.normal(0, 12, shape)
    labels = np.zeros(shape, dtype=np.uint8)
    pancreas = ((x - cx - 4) / 12.0) ** 2 + ((y - cy) / 5.0) ** 2 <= 1
    labels[pancreas & (z >= 2) & (z <= shape[2] - 2)] = 1
    radius = np.maximum(0, 4 - np.abs(z - lesion_slice))
    lesion = (x - cx - 8) ** 2 + (y - cy) ** 2 <= radius**2
    labels[lesion & pancreas] = 2
    image[labels == 1] = 100 + rng.normal(0, 8, int((labels == 1).sum()))
    image[labels == 2] = 20 + rng.normal(0, 8, int((labels == 2).sum()))
    return image.astype(np.int16), labels


def write_nifti(path: Path, data: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, lps_affine() if affine is None else affine), str(path))
    return path


def per_case_table(n_cases: int = 9, seed: int = 0, with_subtype: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_cases):
        for region, base in (("whole", 0.8), ("lesion", 0.55)):
            dice = float(np.clip(base + rng.normal(0, 0.12), 0, 1))
            row = {
                "case_id": f"quiz_{i % 3}_{i:03d}",
                "region": region,
                "dice": dice,
                "nsd": float(np.clip(dice + 0.05, 0, 1)),
                "hd95": float(rng.uniform(2, 30)),
                "msd": float(rng.uniform(0.5, 5)),
                "reference_voxels": 1000,
                "predicted_voxels": 950,
            }
            if with_subtype:
                row["subtype"] = i % 3
            rows.append(row)
    table = pd.DataFrame(rows)
    table.loc[(table.region == "lesion") & (table.case_id == "quiz_0_000"), ["dice", "nsd"]] = math.nan
    return table


BENCHMARK = {
    "baseline_seconds_total": 120.0,
    "optimized_seconds_total": 20.0,
    "one_pass_seconds_total": 12.0,
    "speedup": 6.0,
    "optimized_over_one_pass": 1.67,
    "baseline_peak_memory_mb": 3000,
    "optimized_peak_memory_mb": 2500,
    "agreement_whole_dice": 0.99,
    "same_subtype_fraction": 1.0,
    "setting": "demo",
    "device": "cpu",
    "repeats": 2,
    "agreement_whole_dice_min": 0.97,
    "baseline_peak_gpu_mb": 3000,
    "optimized_peak_gpu_mb": 2500,
    "stock_segmentation_seconds_total": 100.0,
    "optimized_stock_settings_seconds_total": 60.0,
    "end_to_end_bound_seconds_total": 14.0,
    "stock_segmentation_cold_seconds": 130.0,
    "baseline_cold_seconds": 150.0,
    "optimized_stock_settings_cold_seconds": 75.0,
    "optimized_cold_seconds": 30.0,
    "one_pass_cold_seconds": 15.0,
    "end_to_end_bound_cold_seconds": 18.0,
    "optimized_over_end_to_end_bound": 1.43,
    "stock_settings_speedup": 2.0,
}


def benchmark_per_case(n_cases: int = 4) -> pd.DataFrame:
    rows = []
    for i in range(n_cases):
        for path, seconds in (
            ("stock_segmentation", 25.0),
            ("baseline", 30.0),
            ("optimized_stock_settings", 15.0),
            ("optimized", 5.0),
            ("one_pass", 3.0),
            ("end_to_end_bound", 3.5),
        ):
            rows.append({"case_id": f"quiz_{i:03d}", "path": path, "seconds": seconds + i})
    return pd.DataFrame(rows)


def assert_png(path, min_width=300, min_height=200) -> np.ndarray:
    path = Path(path)
    assert path.is_file() and path.suffix == ".png"
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    height, width = pixels.shape[:2]
    assert width >= min_width and height >= min_height, pixels.shape
    assert width <= 4000 and height <= 4000, pixels.shape
    assert pixels[..., :3].var() > 0
    return pixels
