"""Report figures: each plot function on small synthetic inputs written as real files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pancreas_mtl.report import plots
from tests.report.helpers import (
    BENCHMARK,
    assert_png,
    benchmark_per_case,
    lps_affine,
    nnunet_logging,
    per_case_table,
    synthetic_case,
    write_checkpoint,
    write_nifti,
)


@pytest.fixture
def montage_cases(tmp_path) -> list[dict]:
    cases = []
    for i, (label, dice, shift) in enumerate((("best", 0.91, 0), ("worst", 0.42, 5))):
        image, labels = synthetic_case(seed=i)
        prediction = np.roll(labels, shift, axis=0)
        cases.append(
            {
                "case_id": f"quiz_{i}_{i:03d}",
                "image": write_nifti(tmp_path / f"img{i}.nii.gz", image),
                "reference": write_nifti(tmp_path / f"ref{i}.nii.gz", labels),
                "prediction": write_nifti(tmp_path / f"pred{i}.nii.gz", prediction),
                "dice": dice,
                "label": label,
            }
        )
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
    labels[1:9, 1:9, 1] = 1  # largest pancreas slice
    labels[2:5, 2:5, 3] = 2  # 9 lesion voxels
    labels[2:6, 2:6, 4] = 2  # 16 lesion voxels: the largest lesion
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
    volume[0, 3, :] = 1  # patient's right
    volume[7, 4, :] = 3  # patient's left
    volume[2, 0, :] = 2  # anterior
    img = plots._load_canonical(write_nifti(tmp_path / "orient.nii.gz", volume))
    shown = plots._radiological(np.asarray(img.dataobj)[:, :, 0])  # drawn with origin="lower"
    rows, cols = np.nonzero(shown == 1)
    assert cols.tolist() == [0]  # right -> left edge of the image
    rows, cols = np.nonzero(shown == 3)
    assert cols.tolist() == [shown.shape[1] - 1]  # left -> right edge
    rows, cols = np.nonzero(shown == 2)
    assert rows.tolist() == [shown.shape[0] - 1]  # anterior -> top row (origin="lower")


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
    partial = {
        "baseline_seconds_total": 900.0,
        "optimized_seconds_total": 300.0,
        "speedup": None,
        "agreement_whole_dice": None,
        "setting": "real-scale",
    }
    assert_png(plots.plot_benchmark(partial, None, tmp_path / "bench_partial.png"))
