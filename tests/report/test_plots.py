"""Report figures: each plot function on small synthetic inputs written as real files, and the
Snakemake script run through ``runpy`` with a stand-in ``snakemake`` object."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from pancreas_mtl.report import plots

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "workflow" / "scripts" / "make_report_plots.py"


# ------------------------------------------------------------------------------------------ synthetic inputs
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
        (np.asarray(log["full_val_whole_dice"]) + np.asarray(log["full_val_lesion_dice"])) / 2)
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
    lesion = (x - cx - 8) ** 2 + (y - cy) ** 2 <= radius ** 2
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
            row = {"case_id": f"quiz_{i % 3}_{i:03d}", "region": region, "dice": dice,
                   "nsd": float(np.clip(dice + 0.05, 0, 1)), "hd95": float(rng.uniform(2, 30)),
                   "msd": float(rng.uniform(0.5, 5)), "reference_voxels": 1000, "predicted_voxels": 950}
            if with_subtype:
                row["subtype"] = i % 3
            rows.append(row)
    table = pd.DataFrame(rows)
    table.loc[(table.region == "lesion") & (table.case_id == "quiz_0_000"), ["dice", "nsd"]] = math.nan
    return table


BENCHMARK = {"baseline_seconds_total": 120.0, "optimized_seconds_total": 20.0, "one_pass_seconds_total": 12.0,
             "speedup": 6.0, "optimized_over_one_pass": 1.67, "baseline_peak_memory_mb": 3000,
             "optimized_peak_memory_mb": 2500, "agreement_whole_dice": 0.99, "same_subtype_fraction": 1.0,
             "setting": "demo", "device": "cpu", "repeats": 2, "agreement_whole_dice_min": 0.97,
             "baseline_peak_gpu_mb": 3000, "optimized_peak_gpu_mb": 2500}


def benchmark_per_case(n_cases: int = 4) -> pd.DataFrame:
    rows = []
    for i in range(n_cases):
        for path, seconds in (("baseline", 30.0), ("optimized", 5.0), ("one_pass", 3.0)):
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


@pytest.fixture
def montage_cases(tmp_path) -> list[dict]:
    cases = []
    for i, (label, dice, shift) in enumerate((("best", 0.91, 0), ("worst", 0.42, 5))):
        image, labels = synthetic_case(seed=i)
        prediction = np.roll(labels, shift, axis=0)
        cases.append({
            "case_id": f"quiz_{i}_{i:03d}",
            "image": write_nifti(tmp_path / f"img{i}.nii.gz", image),
            "reference": write_nifti(tmp_path / f"ref{i}.nii.gz", labels),
            "prediction": write_nifti(tmp_path / f"pred{i}.nii.gz", prediction),
            "dice": dice, "label": label,
        })
    return cases


# ------------------------------------------------------------------------------------------ plot functions
def test_training_curves_from_checkpoints(tmp_path):
    ckpt1 = write_checkpoint(tmp_path / "s1" / "checkpoint_final.pth", nnunet_logging(12, multitask=False))
    ckpt2 = write_checkpoint(tmp_path / "s2" / "checkpoint_final.pth", nnunet_logging(8, multitask=True, seed=1))
    logs = {"stage 1": plots.load_stage_logging(ckpt1), "stage 2": plots.load_stage_logging(ckpt2)}
    assert math.isnan(logs["stage 1"]["full_val_whole_dice"][0])
    out = plots.plot_training_curves(logs, tmp_path / "out" / "training_curves.png")
    assert out == tmp_path / "out" / "training_curves.png"
    assert_png(out, min_width=800, min_height=600)


def test_training_curves_tolerate_missing_keys_and_uneven_lengths(tmp_path):
    log = nnunet_logging(6, multitask=True)
    log["epoch_end_timestamps"] = log["epoch_end_timestamps"][:-1]  # a checkpoint saved before the epoch ended
    del log["train_cls_loss"]
    log["full_val_macro_f1"] = [math.nan] * 6
    assert_png(plots.plot_training_curves({"stage 2": log}, tmp_path / "one_stage.png"))


def test_load_stage_logging_rejects_a_file_without_logging(tmp_path):
    path = tmp_path / "not_a_checkpoint.pth"
    torch.save({"network_weights": {}}, path)
    with pytest.raises(ValueError, match="logging"):
        plots.load_stage_logging(path)


def test_confusion_matrix(tmp_path):
    out = plots.plot_confusion_matrix([[5, 1, 0], [2, 3, 1], [0, 0, 0]], tmp_path / "cm.png", macro_f1=0.512)
    assert_png(out)


def test_dice_distributions_with_and_without_subtype(tmp_path):
    assert_png(plots.plot_dice_distributions(per_case_table(), tmp_path / "dice.png"))
    assert_png(plots.plot_dice_distributions(per_case_table(with_subtype=False), tmp_path / "dice_plain.png"))


def test_select_slice_prefers_the_largest_lesion_area():
    labels = np.zeros((10, 10, 6), dtype=np.uint8)
    labels[1:9, 1:9, 1] = 1          # largest pancreas slice
    labels[2:5, 2:5, 3] = 2          # 9 lesion voxels
    labels[2:6, 2:6, 4] = 2          # 16 lesion voxels: the largest lesion
    labels[2:4, 2:4, 5] = 2
    assert plots.select_slice(labels) == 4


def test_select_slice_falls_back_to_pancreas_then_middle():
    labels = np.zeros((10, 10, 6), dtype=np.uint8)
    assert plots.select_slice(labels) == 3
    labels[1:3, 1:3, 0] = 1
    labels[1:8, 1:8, 2] = 1
    assert plots.select_slice(labels) == 2


def test_radiological_display_puts_patient_right_on_the_left(tmp_path):
    # The quiz data's affine diag(-sx, -sy, sz) in NIfTI (RAS+ world): voxel index i grows towards the
    # patient's left, index j towards posterior. Mark the right-most column and the most anterior row.
    volume = np.zeros((8, 6, 2), dtype=np.int16)
    volume[0, 3, :] = 1     # patient's right
    volume[7, 4, :] = 3     # patient's left
    volume[2, 0, :] = 2     # anterior
    img = plots._load_canonical(write_nifti(tmp_path / "orient.nii.gz", volume))
    shown = plots._radiological(np.asarray(img.dataobj)[:, :, 0])   # drawn with origin="lower"
    rows, cols = np.nonzero(shown == 1)
    assert cols.tolist() == [0]                        # right -> left edge of the image
    rows, cols = np.nonzero(shown == 3)
    assert cols.tolist() == [shown.shape[1] - 1]       # left -> right edge
    rows, cols = np.nonzero(shown == 2)
    assert rows.tolist() == [shown.shape[0] - 1]       # anterior -> top row (origin="lower")


def test_slice_index_is_reported_in_the_file_own_numbering(tmp_path):
    labels = np.zeros((6, 6, 5), dtype=np.uint8)
    flipped = lps_affine()
    flipped[2, 2] = -2.5  # z index grows towards the feet: canonical order reverses it
    path = write_nifti(tmp_path / "flipped.nii.gz", labels, flipped)
    assert plots._file_slice_index(path, 0) == 4
    assert plots._file_slice_index(write_nifti(tmp_path / "plain.nii.gz", labels), 1) == 1


def test_window_ct():
    np.testing.assert_allclose(plots.window_ct(np.array([-1000, -160, 40, 240, 3000])), [0, 0, 0.5, 1, 1])


def test_overlay_montage(tmp_path, montage_cases):
    assert_png(plots.plot_overlay_montage(montage_cases, tmp_path / "montage.png"), min_height=500)


def test_overlay_montage_rejects_a_prediction_on_another_grid(tmp_path, montage_cases):
    write_nifti(montage_cases[0]["prediction"], np.zeros((10, 10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="prediction shape"):
        plots.plot_overlay_montage(montage_cases, tmp_path / "bad.png")


def test_benchmark(tmp_path):
    assert_png(plots.plot_benchmark(BENCHMARK, benchmark_per_case(), tmp_path / "bench.png"), min_width=800)


def test_benchmark_with_missing_values_and_no_per_case(tmp_path):
    partial = {"baseline_seconds_total": 900.0, "optimized_seconds_total": 300.0, "speedup": None,
               "agreement_whole_dice": None, "setting": "real-scale"}
    assert_png(plots.plot_benchmark(partial, None, tmp_path / "bench_partial.png"))


# ------------------------------------------------------------------------------------------ Snakemake script
def test_make_report_plots_script(tmp_path):
    raw = tmp_path / "raw"
    predictions = tmp_path / "predictions"
    case_rows, per_case_rows = [], []
    for i in range(5):
        case_id = f"quiz_{i % 3}_{i:03d}"
        image, labels = synthetic_case(shape=(48, 48, 8), seed=i, lesion_slice=4)
        write_nifti(raw / "imagesTr" / f"{case_id}_0000.nii.gz", image)
        write_nifti(raw / "labelsTr" / f"{case_id}.nii.gz", labels)
        write_nifti(predictions / f"{case_id}.nii.gz", np.roll(labels, i, axis=1))
        case_rows.append({"case_id": case_id, "split": "validation", "subtype": i % 3,
                          "image": f"imagesTr/{case_id}_0000.nii.gz", "mask": f"labelsTr/{case_id}.nii.gz"})
        for region, dice in (("whole", 0.9 - 0.1 * i), ("lesion", 0.7 - 0.1 * i)):
            per_case_rows.append({"case_id": case_id, "region": region, "dice": dice, "nsd": dice, "hd95": 3.0,
                                  "msd": 1.0, "reference_voxels": 100, "predicted_voxels": 90})
    pd.DataFrame(case_rows).to_csv(tmp_path / "cases.csv", index=False)
    pd.DataFrame(per_case_rows).to_csv(tmp_path / "per_case.csv", index=False)
    (tmp_path / "classification.json").write_text(
        json.dumps({"confusion_matrix": [[2, 0, 0], [0, 1, 1], [0, 0, 1]], "macro_f1": 0.78}))
    (tmp_path / "benchmark.json").write_text(json.dumps(BENCHMARK))
    benchmark_per_case(5).to_csv(tmp_path / "benchmark_per_case.csv", index=False)

    names = ["training_curves", "confusion_matrix", "dice_distribution", "overlay_montage", "benchmark"]
    snakemake = SimpleNamespace(
        input=SimpleNamespace(
            stage1_checkpoint=str(write_checkpoint(tmp_path / "s1.pth", nnunet_logging(10, False))),
            stage2_checkpoint=str(write_checkpoint(tmp_path / "s2.pth", nnunet_logging(10, True))),
            segmentation_per_case=str(tmp_path / "per_case.csv"),
            classification=str(tmp_path / "classification.json"),
            case_table=str(tmp_path / "cases.csv"),
            raw_dataset=str(raw),
            predictions=str(predictions),
            benchmark=str(tmp_path / "benchmark.json"),
            benchmark_per_case=str(tmp_path / "benchmark_per_case.csv"),
        ),
        output=SimpleNamespace(**{n: str(tmp_path / "report" / f"{n}.png") for n in names}),
        log=[str(tmp_path / "logs" / "make_report_plots.log")],
    )
    runpy.run_path(str(SCRIPT), init_globals={"snakemake": snakemake}, run_name="__main__")
    for name in names:
        assert_png(tmp_path / "report" / f"{name}.png")
    log_text = Path(snakemake.log[0]).read_text()
    # best two (quiz_0_000, quiz_1_001) and worst two (quiz_0_003, quiz_1_004) by whole Dice
    assert "quiz_0_000 best, quiz_1_001 best, quiz_0_003 worst, quiz_1_004 worst" in log_text


def test_make_report_plots_script_fails_cleanly_without_predictions(tmp_path):
    pd.DataFrame([{"case_id": "quiz_0_001", "region": "whole", "dice": 0.5}]).to_csv(tmp_path / "pc.csv",
                                                                                     index=False)
    pd.DataFrame([{"case_id": "quiz_0_001", "split": "validation", "subtype": 0, "image": "a", "mask": "b"}]
                 ).to_csv(tmp_path / "cases.csv", index=False)
    (tmp_path / "classification.json").write_text(json.dumps({"confusion_matrix": [[1, 0], [0, 1]]}))
    snakemake = SimpleNamespace(
        input=SimpleNamespace(
            stage1_checkpoint=str(write_checkpoint(tmp_path / "s1.pth", nnunet_logging(3, False))),
            stage2_checkpoint=str(write_checkpoint(tmp_path / "s2.pth", nnunet_logging(3, True))),
            segmentation_per_case=str(tmp_path / "pc.csv"), classification=str(tmp_path / "classification.json"),
            case_table=str(tmp_path / "cases.csv"), raw_dataset=str(tmp_path), predictions=str(tmp_path / "none"),
            benchmark=str(tmp_path / "b.json"), benchmark_per_case=str(tmp_path / "b.csv"),
        ),
        output=SimpleNamespace(**{n: str(tmp_path / f"{n}.png") for n in (
            "training_curves", "confusion_matrix", "dice_distribution", "overlay_montage", "benchmark")}),
        log=[str(tmp_path / "plots.log")],
    )
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(SCRIPT), init_globals={"snakemake": snakemake}, run_name="__main__")
    assert exit_info.value.code == 1
    text = (tmp_path / "plots.log").read_text()
    assert "no validation case has both a whole-pancreas Dice and a prediction" in text
    assert "Traceback" not in text
