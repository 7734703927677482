"""Segmentation metrics of validation predictions against the ground truth, in millimetres.

Every number comes from MONAI's maintained implementations in :mod:`monai.metrics`, called on one
binary region at a time with the voxel spacing read from the files:

* **Dice** -- :func:`monai.metrics.compute_dice` (``ignore_empty=False``).
* **NSD** (normalised surface Dice) -- :func:`monai.metrics.compute_surface_dice` with a tolerance in
  mm (``nsd_tolerance_mm``, default 2.0): the fraction of boundary voxels of both masks that lie within
  the tolerance of the other mask's boundary, ``(|{d_pr <= tau}| + |{d_rp <= tau}|) / (n_p + n_r)``.
* **HD95** -- :func:`monai.metrics.compute_hausdorff_distance` with ``percentile=95``: the larger of
  the two *directed* 95th percentiles (prediction -> reference and reference -> prediction, each
  with linear interpolation as ``torch.quantile``), not the percentile of the pooled distances.
* **MSD** (mean symmetric surface distance) --
  :func:`monai.metrics.compute_average_surface_distance` with ``symmetric=True``: the mean of the
  pooled distances of both directions, ``(sum d_pr + sum d_rp) / (n_p + n_r)`` (not the average of
  the two directed means).

Surfaces, as MONAI defines them (``use_subvoxels=False``): a mask's boundary voxels are the mask
minus its binary erosion with the 6-connected cross (``scipy.ndimage.binary_erosion`` default),
voxels outside the image counting as background, so a mask touching the image border has boundary
voxels there. Distances are Euclidean between voxel centres, scaled by the voxel spacing (exact, a
KD-tree over boundary voxels). MONAI returns float32 values.

Regions: ``whole`` = label > 0 (whole pancreas, lesion included) and ``lesion`` = label == 2.

Empty-mask rules (MONAI's own outputs in these cases are NaN or inf, and partly NaN for Dice
depending on ``ignore_empty``; they are replaced, not passed on):

* reference and prediction both empty (nothing to find, nothing found): Dice = 1, NSD = 1,
  HD95 = 0 mm, MSD = 0 mm.
* exactly one of them empty (a missed region, or a region predicted where there is none):
  Dice = 0, NSD = 0; HD95 and MSD are undefined and stored as NaN in the per-case table. They are
  left out of the mean/std/median of that metric and counted as ``n_undefined`` in the summary.

Summary statistics per region and metric: ``mean``, ``std`` (sample standard deviation, ddof=1;
NaN with fewer than two values), ``median`` over the defined values, ``n`` (number of defined
values) and ``n_undefined``. A statistic with no defined values is NaN (written as JSON ``null``).

Inputs are never resampled: a prediction must be on exactly the reference's grid (same shape and
affine), otherwise :class:`~pancreas_mtl.errors.UserInputError` names both files. Spacing comes from
the reference's NIfTI header zooms, in the array's axis order.

For speed, both masks are cropped to the bounding box of their union plus one voxel of background
before MONAI sees them (MONAI crops the same way internally); no metric changes.

:func:`dice` is the project's plain-numpy Dice of two boolean masks (1 when both are empty), for code
that needs no surface metrics (the trainers' full validation, the inference benchmark's agreement check).
MONAI (and torch, which MONAI's metrics need) are imported only when surface metrics are computed, so
this module imports without them (the nnU-Net environment has no MONAI).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np
import pandas as pd

from pancreas_mtl.data.labels import BACKGROUND_LABEL, LESION_LABEL, MASK_LABELS
from pancreas_mtl.data.validation import process_pool
from pancreas_mtl.errors import UserInputError

log = logging.getLogger(__name__)

REGIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "whole": lambda labels: labels > BACKGROUND_LABEL,
    "lesion": lambda labels: labels == LESION_LABEL,
}
METRICS = ("dice", "nsd", "hd95", "msd")
TABLE_COLUMNS = ["case_id", "region", *METRICS, "reference_voxels", "predicted_voxels"]
#: largest difference (mm) tolerated between the prediction's and the reference's affine entries
AFFINE_ATOL = 1e-4


# -- one case ---------------------------------------------------------------------------------------


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two boolean masks, ``2 |P & R| / (|P| + |R|)``; 1.0 when both are empty (nothing to
    find, nothing found). Plain numpy."""
    prediction = np.asarray(prediction, dtype=bool)
    reference = np.asarray(reference, dtype=bool)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    total = np.count_nonzero(prediction) + np.count_nonzero(reference)
    if total == 0:
        return 1.0
    return float(2.0 * np.count_nonzero(prediction & reference) / total)


def _torch():
    """torch, imported on first use (MONAI's metrics take tensors); see the module docstring."""
    import torch

    return torch


def _monai_metrics():
    """:mod:`monai.metrics`, imported on first use; see the module docstring."""
    from monai import metrics

    return metrics


def _as_batch(mask: np.ndarray):
    """A binary mask as MONAI's one-channel batch-first float tensor [1, 1, *spatial]."""
    return _torch().from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to their union's bounding box plus one voxel (clipped at the image border).

    The one-voxel margin keeps every boundary voxel's erosion neighbourhood; outside the image MONAI
    (like scipy's erosion) counts background anyway, so the metrics are unchanged.
    """
    union = a | b
    if not union.any():
        return a, b
    slices = []
    for axis in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != axis)
        hit = np.flatnonzero(union.any(axis=other))
        slices.append(slice(max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, union.shape[axis])))
    return a[tuple(slices)], b[tuple(slices)]


def region_metrics(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float], nsd_tolerance_mm: float = 2.0
) -> dict[str, float]:
    """Dice, NSD, HD95 and MSD of two binary masks, with the module's empty-mask rules."""
    pred = np.asarray(prediction, dtype=bool)
    ref = np.asarray(reference, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    spacing = [float(s) for s in spacing]
    if len(spacing) != ref.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {ref.ndim}D mask")
    pred_empty, ref_empty = not pred.any(), not ref.any()
    if pred_empty and ref_empty:
        return {"dice": 1.0, "nsd": 1.0, "hd95": 0.0, "msd": 0.0}
    if pred_empty or ref_empty:
        return {"dice": 0.0, "nsd": 0.0, "hd95": float("nan"), "msd": float("nan")}

    pred, ref = _crop_to_union(pred, ref)
    y_pred, y = _as_batch(pred), _as_batch(ref)
    metrics = _monai_metrics()
    with warnings.catch_warnings():
        # MONAI passes its own deprecated argument (always_return_as_numpy) internally
        warnings.simplefilter("ignore", FutureWarning)
        dsc = metrics.compute_dice(y_pred, y, include_background=True, ignore_empty=False)
        nsd = metrics.compute_surface_dice(
            y_pred, y, [float(nsd_tolerance_mm)], include_background=True, spacing=spacing
        )
        hd95 = metrics.compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing)
        msd = metrics.compute_average_surface_distance(
            y_pred, y, include_background=True, symmetric=True, spacing=spacing
        )
    return {"dice": float(dsc.item()), "nsd": float(nsd.item()), "hd95": float(hd95.item()), "msd": float(msd.item())}


def case_metrics(
    prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, ...], nsd_tolerance_mm: float = 2.0
) -> list[dict]:
    """One dict per region (:data:`REGIONS`): region, dice, nsd, hd95, msd, reference_voxels,
    predicted_voxels. ``prediction`` and ``reference`` are label arrays on the same grid."""
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    rows = []
    for region, select in REGIONS.items():
        pred, ref = select(prediction), select(reference)
        row = {"region": region}
        row.update(region_metrics(pred, ref, spacing, nsd_tolerance_mm))
        row["reference_voxels"] = int(ref.sum())
        row["predicted_voxels"] = int(pred.sum())
        rows.append(row)
    return rows


# -- files ------------------------------------------------------------------------------------------


def _load_labels(path: Path) -> tuple[np.ndarray | None, str | None]:
    """The label array of a NIfTI file as uint8, or a problem text."""
    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as err:  # unreadable / truncated file
        return None, f"{path}: cannot be read ({type(err).__name__}: {err})"
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        return None, f"{path}: expected a 3D label image, got shape {data.shape}"
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.rint(data)):
            return None, f"{path}: labels are not whole numbers (dtype {data.dtype})"
    values = np.unique(data)
    bad = [v for v in values.tolist() if v not in MASK_LABELS]
    if bad:
        return None, f"{path}: labels {bad[:10]} outside {list(MASK_LABELS)}"
    return data.astype(np.uint8), None


def _spacing(img, path: Path) -> tuple[float, ...]:
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    from_affine = np.sqrt((np.asarray(img.affine)[:3, :3] ** 2).sum(axis=0))
    if not np.allclose(zooms, from_affine, rtol=1e-3, atol=1e-4):
        log.warning(
            "%s: header zooms %s differ from the affine's voxel sizes %s; using the zooms",
            path,
            zooms,
            tuple(np.round(from_affine, 6)),
        )
    return zooms


def _spatial_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[:3]) if len(shape) == 4 and shape[3] == 1 else tuple(shape)


def check_pairs(pairs: Sequence[tuple[str, Path, Path]]) -> None:
    """Fail (UserInputError) on missing files and on predictions not on their reference's grid.

    Reads headers only; every problem is collected before failing.
    """
    missing_pred = [(case_id, Path(p)) for case_id, p, _ in pairs if not Path(p).is_file()]
    missing_ref = [(case_id, Path(r)) for case_id, _, r in pairs if not Path(r).is_file()]
    if missing_pred:
        raise UserInputError(
            f"no prediction for {len(missing_pred)} reference case(s): "
            + ", ".join(case_id for case_id, _ in missing_pred),
            [f"{case_id}: expected prediction {p}" for case_id, p in missing_pred],
        )
    if missing_ref:
        raise UserInputError(
            f"reference mask missing for {len(missing_ref)} case(s)",
            [f"{case_id}: expected reference {r}" for case_id, r in missing_ref],
        )
    seen: set[str] = set()
    duplicates = sorted({c for c, _, _ in pairs if c in seen or seen.add(c)})
    if duplicates:
        raise UserInputError("case ids listed more than once", [f"{c}: duplicate" for c in duplicates])
    problems = []
    for case_id, pred_path, ref_path in pairs:
        try:
            pred_img, ref_img = nib.load(str(pred_path)), nib.load(str(ref_path))
        except Exception as err:
            problems.append(f"{case_id}: cannot read {pred_path} or {ref_path} ({type(err).__name__}: {err})")
            continue
        pred_shape, ref_shape = _spatial_shape(pred_img.shape), _spatial_shape(ref_img.shape)
        if pred_shape != ref_shape:
            problems.append(
                f"{case_id}: prediction {pred_path} has shape {pred_shape}, reference {ref_path} has shape {ref_shape}"
            )
        elif not np.allclose(pred_img.affine, ref_img.affine, rtol=0, atol=AFFINE_ATOL):
            problems.append(
                f"{case_id}: prediction {pred_path} has affine "
                f"{np.round(pred_img.affine, 4).tolist()}, reference {ref_path} has affine "
                f"{np.round(ref_img.affine, 4).tolist()}"
            )
    if problems:
        raise UserInputError("predictions are not on their reference's grid (nothing is resampled)", problems)


def _evaluate_case(job: tuple[str, Path, Path, float]) -> tuple[list[dict], list[str]]:
    case_id, pred_path, ref_path, tolerance = job
    prediction, p_problem = _load_labels(Path(pred_path))
    reference, r_problem = _load_labels(Path(ref_path))
    problems = [f"{case_id}: {p}" for p in (p_problem, r_problem) if p]
    if problems:
        return [], problems
    spacing = _spacing(nib.load(str(ref_path)), Path(ref_path))
    rows = case_metrics(prediction, reference, spacing, tolerance)
    return [{"case_id": case_id, **row} for row in rows], []


def _worker_init() -> None:
    _torch().set_num_threads(1)


def evaluate_segmentation(
    pairs: list[tuple[str, Path, Path]], nsd_tolerance_mm: float = 2.0, n_workers: int = 1
) -> pd.DataFrame:
    """Metrics for ``(case_id, prediction file, reference file)`` pairs as a long table.

    Columns: case_id, region, dice, nsd, hd95, msd, reference_voxels, predicted_voxels (one row per
    case and region, in the order of ``pairs``). The tolerance is kept in ``table.attrs``.
    """
    pairs = [(str(c), Path(p), Path(r)) for c, p, r in pairs]
    if not pairs:
        raise UserInputError("no cases to evaluate")
    if not np.isfinite(nsd_tolerance_mm) or nsd_tolerance_mm < 0:
        raise UserInputError(f"nsd_tolerance_mm must be a finite number >= 0, got {nsd_tolerance_mm!r}")
    check_pairs(pairs)
    jobs = [(c, p, r, float(nsd_tolerance_mm)) for c, p, r in pairs]
    n_workers = max(1, min(int(n_workers), len(jobs)))
    log.info(
        "evaluating segmentation of %d case(s) with %d worker(s), NSD tolerance %.3g mm",
        len(jobs),
        n_workers,
        nsd_tolerance_mm,
    )
    if n_workers == 1:
        results = [_evaluate_case(job) for job in jobs]
    else:
        _monai_metrics()  # imported once here, so that the forked workers inherit it
        with process_pool(n_workers, initializer=_worker_init) as pool:
            results = list(pool.map(_evaluate_case, jobs))
    problems = [p for _, case_problems in results for p in case_problems]
    if problems:
        raise UserInputError("invalid label images", problems)
    table = pd.DataFrame([row for rows, _ in results for row in rows], columns=TABLE_COLUMNS)
    table.attrs["nsd_tolerance_mm"] = float(nsd_tolerance_mm)
    return table


# -- summary ----------------------------------------------------------------------------------------


def _stats(values: pd.Series) -> dict:
    values = pd.to_numeric(values, errors="coerce").astype(float)
    defined = values[np.isfinite(values)]
    n = int(defined.size)
    return {
        "mean": float(defined.mean()) if n else float("nan"),
        "std": float(defined.std(ddof=1)) if n > 1 else float("nan"),
        "median": float(defined.median()) if n else float("nan"),
        "n": n,
        "n_undefined": int(values.size - n),
    }


def summarize_segmentation(table: pd.DataFrame) -> dict:
    """``{region: {metric: {mean, std, median, n, n_undefined}}}`` over the cases in ``table``.

    NaN (undefined) values are left out of mean/std/median and counted in ``n_undefined``. Every
    region of :data:`REGIONS` appears (with ``n`` 0 if the table has no rows for it).
    """
    missing = [c for c in ("region", *METRICS) if c not in table.columns]
    if missing:
        raise ValueError(f"segmentation table lacks column(s): {', '.join(missing)}")
    regions = list(REGIONS) + [r for r in pd.unique(table["region"]) if r not in REGIONS]
    return {
        region: {metric: _stats(table.loc[table["region"] == region, metric]) for metric in METRICS}
        for region in regions
    }
