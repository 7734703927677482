"""Validation of a whole quiz data folder before anything is written.

:func:`validate_quiz_folder` checks the layout (:func:`~pancreas_mtl.data.quiz_layout.discover_quiz_cases`)
and then reads every file completely, and raises one :class:`~pancreas_mtl.errors.QuizDataError`
that lists every problem found, each naming its file (relative to the quiz folder). It never
modifies anything.

Content checks, per file:

* the file is a readable NIfTI file, read to the end: for ``.nii.gz`` the whole gzip stream is
  decompressed first, so a truncated file or a corrupt byte (CRC mismatch) is caught even when
  nibabel alone would not notice;
* the volume is 3D. A 4D (or 5D...) file whose extra dimensions all have size 1, e.g. shape
  ``(x, y, z, 1)``, is accepted as 3D (:func:`spatial_shape`); the conversion writes such files
  squeezed to 3D. Anything else (2D, or a real 4th dimension) is rejected;
* float images contain no NaN/inf (nnU-Net cannot normalise them);
* masks: every value ``v`` is finite, ``|v - rint(v)| <= MASK_ROUND_TOLERANCE`` (1e-3) and
  ``rint(v)`` is 0, 1 or 2. This accepts the quiz's ``1.0000152587890625`` pancreas value;
* image and mask have the same 3D shape and the same affine within ``AFFINE_RTOL``/``AFFINE_ATOL``
  (1e-4 relative and absolute, elementwise on the 4x4 nibabel affine, as ``numpy.allclose``).
"""

from __future__ import annotations

import gzip
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import nibabel as nib
import numpy as np

from pancreas_mtl.data.labels import MASK_LABELS
from pancreas_mtl.data.quiz_layout import SPLITS, QuizCase, discover_quiz_cases, relative_name
from pancreas_mtl.errors import QuizDataError

log = logging.getLogger(__name__)

MASK_ROUND_TOLERANCE = 1e-3
AFFINE_RTOL = 1e-4
AFFINE_ATOL = 1e-4
_GZIP_CHUNK = 1 << 22
_SLAB_VOXELS = 1 << 22  # mask values are checked in slabs of about this many voxels


def spatial_shape(shape: Iterable[int]) -> tuple[int, int, int] | None:
    """The 3D shape of a NIfTI data shape, or None when it is not a 3D volume.

    ``(x, y, z)`` -> itself; ``(x, y, z, 1)`` / ``(x, y, z, 1, 1)`` -> ``(x, y, z)`` (trailing
    singleton dimensions are accepted as 3D); anything else -> None.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3 or any(s != 1 for s in shape[3:]):
        return None
    return shape[:3]  # type: ignore[return-value]


def process_pool(n_workers: int, initializer=None) -> ProcessPoolExecutor:
    """A process pool that does not re-run the caller's ``__main__`` (Snakemake scripts have no guard).

    'fork' where the platform has it; otherwise the platform default. ``initializer`` runs once in
    each worker.
    """
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork") if "fork" in methods else None
    return ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=initializer)


def map_cases(func, cases: list, n_workers: int, *args) -> Iterator:
    """``func(case, *args)`` for every case, in order; in a process pool when ``n_workers > 1``."""
    if n_workers <= 1 or len(cases) <= 1:
        for case in cases:
            yield func(case, *args)
        return
    with process_pool(min(n_workers, len(cases))) as pool:
        futures = [pool.submit(func, case, *args) for case in cases]
        for fut in futures:
            yield fut.result()


def _verify_gzip_stream(path: Path) -> None:
    """Decompress a whole .gz file (raises on truncation or CRC mismatch); no-op for other files."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic != b"\x1f\x8b":
        if path.name.lower().endswith(".gz"):
            raise OSError("not a gzip file although the name ends in .gz")
        return
    with gzip.open(path, "rb") as fh:
        while fh.read(_GZIP_CHUNK):
            pass


def _describe(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return f"{type(err).__name__}: {text}" if text != type(err).__name__ else text


def _load_fully(path: Path, rel: str, problems: list[str]):
    """(image, data) with the voxel data read completely, or (None, None) after adding a problem."""
    try:
        _verify_gzip_stream(path)
    except Exception as err:
        problems.append(f"{rel}: unreadable, truncated or corrupt file ({_describe(err)})")
        return None, None
    try:
        img = nib.load(str(path))
    except Exception as err:
        problems.append(f"{rel}: not a readable NIfTI file ({_describe(err)})")
        return None, None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        problems.append(f"{rel}: not a NIfTI image (nibabel reads it as {type(img).__name__})")
        return None, None
    if spatial_shape(img.shape) is None:
        problems.append(f"{rel}: not a 3D volume (shape {tuple(img.shape)}); expected (x, y, z) or (x, y, z, 1)")
        return None, None
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as err:
        problems.append(f"{rel}: truncated or corrupt voxel data ({_describe(err)})")
        return None, None
    return img, data.reshape(spatial_shape(img.shape))


def _slabs(data: np.ndarray) -> Iterator[np.ndarray]:
    step = max(1, _SLAB_VOXELS // max(1, data.shape[0] * data.shape[1]))
    for z in range(0, data.shape[2], step):
        yield data[:, :, z : z + step]


def _check_image_values(data: np.ndarray, rel: str, problems: list[str]) -> None:
    if not np.issubdtype(data.dtype, np.floating):
        return
    n_bad = sum(int(np.count_nonzero(~np.isfinite(s))) for s in _slabs(data))
    if n_bad:
        problems.append(f"{rel}: image contains {n_bad} NaN/inf voxel(s)")


def mask_value_problem(data: np.ndarray) -> str | None:
    """Why mask values are not (rounding to) {0, 1, 2}, or None when they are fine."""
    n_nonfinite = n_fraction = n_label = 0
    examples: set[float] = set()
    is_float = np.issubdtype(data.dtype, np.floating)
    for slab in _slabs(data):
        if is_float:
            finite = np.isfinite(slab)
            bad_finite = ~finite
            n_nonfinite += int(np.count_nonzero(bad_finite))
            vals = np.where(finite, slab, 0)
            rounded = np.rint(vals)
            bad_fraction = np.abs(vals - rounded) > MASK_ROUND_TOLERANCE
            bad_label = ~bad_fraction & ((rounded < MASK_LABELS[0]) | (rounded > MASK_LABELS[-1]))
            n_fraction += int(np.count_nonzero(bad_fraction))
            bad = bad_finite | bad_fraction | bad_label
        else:
            bad_label = (slab < MASK_LABELS[0]) | (slab > MASK_LABELS[-1])
            bad = bad_label
        n_label += int(np.count_nonzero(bad_label))
        if len(examples) < 5 and bad.any():
            examples.update(float(v) for v in np.unique(slab[bad])[:5])
    if not (n_nonfinite or n_fraction or n_label):
        return None
    parts = []
    if n_nonfinite:
        parts.append(f"{n_nonfinite} NaN/inf voxel(s)")
    if n_fraction:
        parts.append(f"{n_fraction} voxel(s) more than {MASK_ROUND_TOLERANCE:g} away from an integer")
    if n_label:
        parts.append(f"{n_label} voxel(s) that round to a label outside {{0, 1, 2}}")
    shown = ", ".join(repr(v) for v in sorted(examples, key=lambda v: (np.isnan(v), v))[:5])
    return "mask values are not 0, 1, 2: " + "; ".join(parts) + f" (e.g. {shown})"


def _fmt_affine(affine: np.ndarray) -> str:
    text = np.array2string(np.asarray(affine)[:3], precision=4, suppress_small=True, separator=",")
    return " ".join(text.split())


def check_case_content(case: QuizCase, quiz_dir: str | Path) -> list[str]:
    """Read one case completely and return its problems (each naming its file)."""
    root = Path(quiz_dir)
    problems: list[str] = []
    rel_img = relative_name(case.image, root)
    img, img_data = _load_fully(case.image, rel_img, problems)
    if img_data is not None:
        _check_image_values(img_data, rel_img, problems)
    if case.mask is None:
        return problems
    rel_mask = relative_name(case.mask, root)
    mask, mask_data = _load_fully(case.mask, rel_mask, problems)
    if mask_data is not None:
        why = mask_value_problem(mask_data)
        if why:
            problems.append(f"{rel_mask}: {why}")
    if img is not None and mask is not None:
        img_shape, mask_shape = spatial_shape(img.shape), spatial_shape(mask.shape)
        if img_shape != mask_shape:
            problems.append(f"{rel_mask}: mask shape {mask_shape} does not match image shape {img_shape} ({rel_img})")
        elif not np.allclose(img.affine, mask.affine, rtol=AFFINE_RTOL, atol=AFFINE_ATOL):
            diff = float(np.max(np.abs(img.affine - mask.affine)))
            problems.append(
                f"{rel_mask}: mask affine does not match the image affine ({rel_img}); "
                f"largest difference {diff:.4g} (tolerance {AFFINE_RTOL:g} relative + "
                f"{AFFINE_ATOL:g} absolute); image {_fmt_affine(img.affine)}, "
                f"mask {_fmt_affine(mask.affine)}"
            )
    return problems


def validate_quiz_folder(
    quiz_dir: str | Path, n_workers: int = 1, allow_partial: bool = False, splits: tuple[str, ...] = SPLITS
) -> list[QuizCase]:
    """Validate the quiz folder (the folders of ``splits``, all by default); return its cases or raise
    :class:`QuizDataError` with every problem.

    Layout problems (names, folders, pairs, duplicates, missing/empty folders) and content problems
    (unreadable/truncated files, non-3D volumes, shape/affine mismatch, bad mask values, NaN in
    images) are all collected before raising. Files are read in a process pool when
    ``n_workers > 1``. Nothing is written or modified.
    """
    t0 = time.perf_counter()
    root = Path(quiz_dir)
    cases, problems = discover_quiz_cases(root, allow_partial=allow_partial, splits=splits)
    n = len(cases)
    log.info("validating %d case(s) in %s with %d worker(s)", n, root, max(1, n_workers))
    step = max(1, n // 10)
    for i, case_problems in enumerate(map_cases(check_case_content, cases, n_workers, root), start=1):
        problems.extend(case_problems)
        if i % step == 0 or i == n:
            log.info("validated %d/%d case(s)", i, n)
    if problems:
        raise QuizDataError(f"The quiz data folder {root} is not usable; fix these problems and run again", problems)
    log.info("quiz folder OK: %d case(s) in %.1f s", n, time.perf_counter() - t0)
    return cases
