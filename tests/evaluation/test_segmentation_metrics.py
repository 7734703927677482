"""Segmentation metrics (MONAI-based) against a second, independent implementation in this file.

The independent implementation uses the same *definitions* as the library (documented in
``pancreas_mtl.evaluation.segmentation``): boundary voxels = mask minus its 6-connected binary erosion
(outside the image = background), distances between voxel centres in mm; HD95 = the larger of the two
directed 95th percentiles (linear interpolation); MSD = mean of the pooled distances of both
directions; NSD = fraction of boundary voxels of both masks within the tolerance. It computes the
distances with scipy's exact Euclidean distance transform (``sampling=spacing``) instead of MONAI's
KD-tree, and Dice with plain numpy.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_surface_dice,
)
from scipy import ndimage

from pancreas_mtl.errors import UserInputError
from pancreas_mtl.evaluation.segmentation import (
    case_metrics,
    dice,
    evaluate_segmentation,
    region_metrics,
    summarize_segmentation,
)
from tests.evaluation.helpers import lps_affine, write_labels

SPACING = (0.7, 0.7, 3.0)


# -- the independent implementation -------------------------------------------------------------------


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _directed(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """Distances (mm) from each boundary voxel of ``a`` to the nearest boundary voxel of ``b``."""
    dt = ndimage.distance_transform_edt(~_boundary(b), sampling=spacing)
    return dt[_boundary(a)]


def independent_metrics(pred: np.ndarray, ref: np.ndarray, spacing, tolerance: float) -> dict:
    pred, ref = pred.astype(bool), ref.astype(bool)
    dsc = 2.0 * np.logical_and(pred, ref).sum() / (pred.sum() + ref.sum())
    d_pr, d_rp = _directed(pred, ref, spacing), _directed(ref, pred, spacing)
    both = np.concatenate([d_pr, d_rp])
    return {
        "dice": float(dsc),
        "nsd": float((both <= tolerance).sum() / both.size),
        "hd95": float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))),
        "msd": float(both.mean()),
    }


def random_blob(shape, seed, sigma=(3.0, 3.0, 1.0), level=0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma)
    return field > level * field.std()


def cube(shape, lo, hi) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


def assert_agree(got: dict, want: dict) -> None:
    assert got["dice"] == pytest.approx(want["dice"], abs=1e-6)
    assert got["nsd"] == pytest.approx(want["nsd"], abs=1e-6)
    for key in ("hd95", "msd"):  # MONAI returns float32 millimetres
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-4), key


# -- agreement with the independent implementation --------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("spacing", [SPACING, (0.8, 0.6, 2.5)])
def test_random_blobs_agree_with_independent_implementation(seed, spacing):
    shape = (40, 36, 14)
    ref = random_blob(shape, seed)
    pred = random_blob(shape, seed + 100)
    pred |= ndimage.binary_dilation(ref, iterations=1) & random_blob(shape, seed + 200, level=0.0)
    assert ref.any() and pred.any() and not np.array_equal(ref, pred)
    # blobs of this size reach the image border, which exercises the border convention
    assert ref[0].any() or ref[-1].any() or ref[:, :, 0].any() or ref[:, :, -1].any()
    for tolerance in (1.0, 2.0, 3.5):
        got = region_metrics(pred, ref, spacing, nsd_tolerance_mm=tolerance)
        assert_agree(got, independent_metrics(pred, ref, spacing, tolerance))


def test_small_perturbation_agrees_with_independent_implementation():
    ref = random_blob((30, 30, 12), seed=7, level=0.5)
    pred = ndimage.binary_erosion(ref) | (ndimage.binary_dilation(ref) & random_blob((30, 30, 12), 8, level=0))
    got = region_metrics(pred, ref, SPACING, 2.0)
    assert_agree(got, independent_metrics(pred, ref, SPACING, 2.0))
    assert 0 < got["nsd"] < 1


def test_cropping_does_not_change_monai_results():
    """region_metrics crops to the union's bounding box (+1 voxel); MONAI on the full arrays agrees."""
    shape = (48, 44, 16)
    ref, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    ref[10:30, 12:28, 4:10] = random_blob((20, 16, 6), 3, level=-0.5)
    pred[11:31, 12:28, 5:11] = random_blob((20, 16, 6), 4, level=-0.5)
    got = region_metrics(pred, ref, SPACING, 2.0)
    y_pred = torch.from_numpy(pred.astype(np.float32))[None, None]
    y = torch.from_numpy(ref.astype(np.float32))[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        full = {
            "dice": compute_dice(y_pred, y, include_background=True).item(),
            "nsd": compute_surface_dice(y_pred, y, [2.0], include_background=True, spacing=SPACING).item(),
            "hd95": compute_hausdorff_distance(
                y_pred, y, include_background=True, percentile=95, spacing=SPACING
            ).item(),
            "msd": compute_average_surface_distance(
                y_pred, y, include_background=True, symmetric=True, spacing=SPACING
            ).item(),
        }
    assert got == pytest.approx(full, abs=1e-6)


# -- analytically known answers -----------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2])
def test_cubes_shifted_along_thick_axis(k):
    shape = (24, 24, 16)
    ref = cube(shape, (4, 4, 3), (16, 16, 9))  # 12 x 12 x 6 voxels
    pred = cube(shape, (4, 4, 3 + k), (16, 16, 9 + k))  # shifted by k slices of 3 mm
    got = region_metrics(pred, ref, SPACING, 2.0)
    assert got["dice"] == pytest.approx((6 - k) / 6, abs=1e-6)
    assert got["hd95"] == pytest.approx(3.0 * k, abs=1e-4)
    assert_agree(got, independent_metrics(pred, ref, SPACING, 2.0))
    # every boundary distance is at most 3k mm: a tolerance just above it gives NSD 1, just below < 1
    assert region_metrics(pred, ref, SPACING, 3.0 * k + 1e-3)["nsd"] == pytest.approx(1.0)
    assert region_metrics(pred, ref, SPACING, 3.0 * k - 1e-3)["nsd"] < 1.0


@pytest.mark.parametrize("k", [1, 3])
def test_cubes_shifted_in_plane(k):
    shape = (30, 24, 12)
    ref = cube(shape, (5, 4, 2), (17, 16, 8))
    pred = cube(shape, (5 + k, 4, 2), (17 + k, 16, 8))
    got = region_metrics(pred, ref, SPACING, 2.0)
    assert got["dice"] == pytest.approx((12 - k) / 12, abs=1e-6)
    assert got["hd95"] == pytest.approx(0.7 * k, abs=1e-4)
    assert_agree(got, independent_metrics(pred, ref, SPACING, 2.0))


def test_identical_masks():
    mask = random_blob((20, 20, 8), 5)
    got = region_metrics(mask, mask.copy(), SPACING, 2.0)
    assert got == {"dice": 1.0, "nsd": 1.0, "hd95": 0.0, "msd": 0.0}


def test_nested_spheres_msd_and_hd():
    """A prediction one voxel shell larger than the reference, isotropic 1 mm: every distance is 1 mm
    or less, and all surface-to-surface distances of the outer shell are exactly 1 mm."""
    zz, yy, xx = np.mgrid[:21, :21, :21]
    r2 = (xx - 10) ** 2 + (yy - 10) ** 2 + (zz - 10) ** 2
    ref = r2 <= 36
    pred = ndimage.binary_dilation(ref)
    got = region_metrics(pred, ref, (1.0, 1.0, 1.0), 1.0)
    assert got["nsd"] == pytest.approx(1.0)
    assert got["hd95"] <= 1.0 + 1e-6
    assert_agree(got, independent_metrics(pred, ref, (1.0, 1.0, 1.0), 1.0))


# -- the plain-numpy dice -------------------------------------------------------------------------


def test_dice_of_boolean_masks():
    a = np.zeros((4, 4, 2), bool)
    a[:2] = True  # 16 voxels
    b = np.zeros_like(a)
    b[1:3] = True  # 16 voxels, 8 of them shared with a
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0
    empty = np.zeros_like(a)
    assert dice(empty, empty) == 1.0  # nothing to find, nothing found
    assert dice(a, empty) == 0.0 and dice(empty, a) == 0.0
    labels = np.where(a, 2, 0)  # a label map, compared as masks by the caller
    assert dice(labels == 2, b) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shape"):
        dice(a, a[:, :, :1])


def test_dice_agrees_with_monai():
    pred, ref = random_blob((24, 24, 10), 1), random_blob((24, 24, 10), 2)
    assert dice(pred, ref) == pytest.approx(region_metrics(pred, ref, SPACING)["dice"], rel=1e-6)
    assert dice(pred, ref) == pytest.approx(independent_metrics(pred, ref, SPACING, 2.0)["dice"])


def test_data_and_evaluation_import_without_torch_monai_or_snakemake():
    """The nnU-Net environment has no MONAI: the trainers import dice() from this module."""
    code = (
        "import sys\n"
        "import pancreas_mtl.data.conversion, pancreas_mtl.data.synthetic, pancreas_mtl.data.validation\n"
        "import pancreas_mtl.data.case_table, pancreas_mtl.data.class_probabilities\n"
        "import pancreas_mtl.evaluation.segmentation, pancreas_mtl.evaluation.classification\n"
        "import pancreas_mtl.evaluation.summary, pancreas_mtl.evaluation.validation_report\n"
        "print(sorted(m for m in ('torch', 'monai', 'snakemake') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


# -- empty-mask rules -------------------------------------------------------------------------------


def test_both_empty():
    empty = np.zeros((10, 10, 5), bool)
    assert region_metrics(empty, empty, SPACING) == {"dice": 1.0, "nsd": 1.0, "hd95": 0.0, "msd": 0.0}


@pytest.mark.parametrize("which", ["prediction", "reference"])
def test_exactly_one_empty(which):
    empty, full = np.zeros((10, 10, 5), bool), cube((10, 10, 5), (2, 2, 1), (6, 6, 3))
    pred, ref = (empty, full) if which == "prediction" else (full, empty)
    got = region_metrics(pred, ref, SPACING)
    assert got["dice"] == 0.0 and got["nsd"] == 0.0
    assert math.isnan(got["hd95"]) and math.isnan(got["msd"])


def test_monai_raw_outputs_on_empty_masks_are_what_the_module_normalises():
    """Pins MONAI's own behaviour that the empty-mask rules replace (so a MONAI change is noticed)."""
    empty = torch.zeros(1, 1, 8, 8, 4)
    full = torch.zeros(1, 1, 8, 8, 4)
    full[..., 2:5, 2:5, 1:3] = 1
    kw = {"include_background": True, "spacing": SPACING}

    def raw(p, r):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return (
                compute_dice(p, r, include_background=True).item(),
                compute_dice(p, r, include_background=True, ignore_empty=False).item(),
                compute_surface_dice(p, r, [2.0], **kw).item(),
                compute_hausdorff_distance(p, r, percentile=95, **kw).item(),
                compute_average_surface_distance(p, r, symmetric=True, **kw).item(),
            )

    d, d_keep, nsd, hd, msd = raw(empty, empty)
    assert math.isnan(d) and d_keep == 1.0 and math.isnan(nsd) and math.isnan(hd) and math.isnan(msd)
    d, d_keep, nsd, hd, msd = raw(empty, full)  # prediction empty
    assert d == 0.0 and d_keep == 0.0 and nsd == 0.0 and math.isnan(hd) and math.isinf(msd)
    d, d_keep, nsd, hd, msd = raw(full, empty)  # reference empty
    assert math.isnan(d) and d_keep == 0.0 and nsd == 0.0 and math.isnan(hd) and math.isinf(msd)


def test_case_metrics_regions_and_lesion_free_case():
    shape = (20, 20, 8)
    ref = np.zeros(shape, np.uint8)
    ref[4:14, 4:14, 2:6] = 1
    pred = np.zeros(shape, np.uint8)
    pred[5:14, 4:14, 2:6] = 1
    rows = {r["region"]: r for r in case_metrics(pred, ref, SPACING)}
    assert list(rows) == ["whole", "lesion"]
    assert rows["whole"]["dice"] == pytest.approx(2 * 360 / (400 + 360), abs=1e-6)
    assert rows["whole"]["reference_voxels"] == 400 and rows["whole"]["predicted_voxels"] == 360
    assert {k: rows["lesion"][k] for k in ("dice", "nsd", "hd95", "msd")} == {
        "dice": 1.0,
        "nsd": 1.0,
        "hd95": 0.0,
        "msd": 0.0,
    }
    assert rows["lesion"]["reference_voxels"] == 0 and rows["lesion"]["predicted_voxels"] == 0


def test_case_metrics_lesion_counts_inside_whole():
    shape = (20, 20, 8)
    ref = np.zeros(shape, np.uint8)
    ref[4:14, 4:14, 2:6] = 1
    ref[6:9, 6:9, 3:5] = 2
    pred = ref.copy()
    pred[pred == 2] = 1  # lesion labelled as pancreas: whole region perfect, lesion missed
    rows = {r["region"]: r for r in case_metrics(pred, ref, SPACING)}
    assert rows["whole"]["dice"] == 1.0 and rows["whole"]["hd95"] == 0.0
    assert rows["lesion"]["dice"] == 0.0 and rows["lesion"]["nsd"] == 0.0
    assert math.isnan(rows["lesion"]["hd95"]) and math.isnan(rows["lesion"]["msd"])
    assert rows["lesion"]["reference_voxels"] == 18 and rows["lesion"]["predicted_voxels"] == 0


# -- summary -------------------------------------------------------------------------------------------


def test_summarize_excludes_undefined_and_counts_them():
    nan = float("nan")
    table = pd.DataFrame(
        [
            {"case_id": "a", "region": "whole", "dice": 0.8, "nsd": 0.9, "hd95": 2.0, "msd": 1.0},
            {"case_id": "b", "region": "whole", "dice": 0.6, "nsd": 0.7, "hd95": 4.0, "msd": 2.0},
            {"case_id": "c", "region": "whole", "dice": 0.7, "nsd": 0.5, "hd95": 9.0, "msd": 3.0},
            {"case_id": "a", "region": "lesion", "dice": 0.0, "nsd": 0.0, "hd95": nan, "msd": nan},
            {"case_id": "b", "region": "lesion", "dice": 0.5, "nsd": 0.6, "hd95": 5.0, "msd": 1.5},
            {"case_id": "c", "region": "lesion", "dice": 1.0, "nsd": 1.0, "hd95": 0.0, "msd": 0.0},
        ]
    )
    s = summarize_segmentation(table)
    assert s["whole"]["dice"]["mean"] == pytest.approx(0.7)
    assert s["whole"]["dice"]["std"] == pytest.approx(0.1)  # sample std (ddof=1)
    assert s["whole"]["hd95"]["median"] == pytest.approx(4.0)
    assert s["whole"]["hd95"]["n_undefined"] == 0 and s["whole"]["hd95"]["n"] == 3
    assert s["lesion"]["dice"]["mean"] == pytest.approx(0.5)
    assert s["lesion"]["hd95"] == {
        "mean": 2.5,
        "std": pytest.approx(math.sqrt(12.5)),
        "median": 2.5,
        "n": 2,
        "n_undefined": 1,
    }
    one = summarize_segmentation(table[table["case_id"] == "a"])
    assert one["lesion"]["hd95"]["n"] == 0 and one["lesion"]["hd95"]["n_undefined"] == 1
    assert math.isnan(one["lesion"]["hd95"]["mean"]) and math.isnan(one["whole"]["dice"]["std"])


# -- files ---------------------------------------------------------------------------------------------


def test_evaluate_segmentation_reads_spacing_in_array_axis_order(tmp_path):
    spacing = (0.7, 0.8, 3.0)
    affine = lps_affine(spacing)
    shape = (24, 24, 14)
    ref = cube(shape, (4, 4, 2), (16, 16, 8)).astype(np.uint8)
    pairs = []
    for case_id, lo, hi, _ in [
        ("z2", (4, 4, 4), (16, 16, 10), 6.0),
        ("x1", (5, 4, 2), (17, 16, 8), 0.7),
        ("y2", (4, 6, 2), (16, 18, 8), 1.6),
    ]:
        write_labels(tmp_path / "ref" / f"{case_id}.nii.gz", ref, affine)
        write_labels(tmp_path / "pred" / f"{case_id}.nii.gz", cube(shape, lo, hi).astype(np.uint8), affine)
        pairs.append((case_id, tmp_path / "pred" / f"{case_id}.nii.gz", tmp_path / "ref" / f"{case_id}.nii.gz"))
    table = evaluate_segmentation(pairs, nsd_tolerance_mm=2.0)
    assert list(table.columns) == [
        "case_id",
        "region",
        "dice",
        "nsd",
        "hd95",
        "msd",
        "reference_voxels",
        "predicted_voxels",
    ]
    assert len(table) == 6 and table.attrs["nsd_tolerance_mm"] == 2.0
    whole = table[table["region"] == "whole"].set_index("case_id")
    assert whole.loc["z2", "hd95"] == pytest.approx(6.0, abs=1e-4)
    assert whole.loc["x1", "hd95"] == pytest.approx(0.7, abs=1e-4)
    assert whole.loc["y2", "hd95"] == pytest.approx(1.6, abs=1e-4)
    lesion = table[table["region"] == "lesion"]
    assert (lesion["dice"] == 1.0).all() and (lesion["hd95"] == 0.0).all()


def test_evaluate_segmentation_parallel_matches_serial(tmp_path):
    affine = lps_affine(SPACING)
    pairs = []
    for i in range(3):
        ref = random_blob((24, 24, 10), i).astype(np.uint8)
        ref[random_blob((24, 24, 10), i + 10, level=1.0) & (ref > 0)] = 2
        pred = random_blob((24, 24, 10), i + 20).astype(np.uint8)
        write_labels(tmp_path / f"r{i}.nii.gz", ref, affine)
        write_labels(tmp_path / f"p{i}.nii.gz", pred, affine)
        pairs.append((f"c{i}", tmp_path / f"p{i}.nii.gz", tmp_path / f"r{i}.nii.gz"))
    serial = evaluate_segmentation(pairs)
    parallel = evaluate_segmentation(pairs, n_workers=2)
    pd.testing.assert_frame_equal(serial, parallel)
    assert serial["case_id"].tolist() == ["c0", "c0", "c1", "c1", "c2", "c2"]


def test_shape_mismatch_names_both_files(tmp_path):
    affine = lps_affine(SPACING)
    ref = write_labels(tmp_path / "ref" / "quiz_0_001.nii.gz", np.zeros((10, 10, 5)), affine)
    pred = write_labels(tmp_path / "pred" / "quiz_0_001.nii.gz", np.zeros((10, 10, 6)), affine)
    with pytest.raises(UserInputError) as err:
        evaluate_segmentation([("quiz_0_001", pred, ref)])
    text = err.value.render()
    assert str(pred) in text and str(ref) in text and "shape" in text


def test_affine_mismatch_names_both_files(tmp_path):
    ref = write_labels(tmp_path / "ref" / "quiz_0_001.nii.gz", np.zeros((10, 10, 5)), lps_affine(SPACING))
    pred = write_labels(
        tmp_path / "pred" / "quiz_0_001.nii.gz",
        np.zeros((10, 10, 5)),
        lps_affine(SPACING, origin=(100.0, 50.0, -297.0)),
    )
    with pytest.raises(UserInputError) as err:
        evaluate_segmentation([("quiz_0_001", pred, ref)])
    text = err.value.render()
    assert str(pred) in text and str(ref) in text and "affine" in text


def test_missing_predictions_are_listed(tmp_path):
    affine = lps_affine(SPACING)
    pairs = []
    for case_id in ("quiz_0_001", "quiz_1_002", "quiz_2_003"):
        ref = write_labels(tmp_path / "ref" / f"{case_id}.nii.gz", np.zeros((6, 6, 4)), affine)
        pairs.append((case_id, tmp_path / "pred" / f"{case_id}.nii.gz", ref))
    write_labels(tmp_path / "pred" / "quiz_1_002.nii.gz", np.zeros((6, 6, 4)), affine)
    with pytest.raises(UserInputError) as err:
        evaluate_segmentation(pairs)
    assert "quiz_0_001" in err.value.summary and "quiz_2_003" in err.value.summary
    assert "quiz_1_002" not in err.value.render()


def test_labels_outside_range_are_rejected(tmp_path):
    affine = lps_affine(SPACING)
    ref = write_labels(tmp_path / "ref.nii.gz", np.zeros((6, 6, 4)), affine)
    bad = np.zeros((6, 6, 4))
    bad[2, 2, 2] = 3
    pred = write_labels(tmp_path / "pred.nii.gz", bad, affine)
    with pytest.raises(UserInputError, match=r"labels \[3\]"):
        evaluate_segmentation([("c", pred, ref)])
