"""Seeded synthetic stand-in for the pancreas quiz data (same layout, dtypes, orientation, spacing).

The demo workflow needs data that looks like the quiz, file for file, without shipping real CT.
Each case is built in physical space (millimetres, a fixed field of view centred on the origin)
and then sampled at that case's own anisotropic spacing, so voxel shapes differ from case to case
while the anatomy keeps its physical size:

* body: soft tissue (40-60 HU) with smooth fat islands (~-100 HU), a fat rim around the pancreas,
  a contrast-filled vessel and sometimes a pocket of bowel gas (-1000 HU);
* pancreas (~100 HU): a tube of varying radius (about 8-12 mm thick, thicker at the head)
  along a smooth curve that spans most of the in-plane field and 2-3 cm in z, placed with
  random rotation and jitter;
* exactly one lesion, mostly inside the pancreas, whose look encodes the subtype:

  - subtype 0: round, homogeneous, hypodense (0-20 HU), smooth edges (cyst-like);
  - subtype 1: lobulated, hyperdense (170-200 HU) with a speckled high-frequency texture;
  - subtype 2: elongated and irregular, dark core (~50 HU) inside a bright enhancing rim (~200 HU).

These are the cues of the default ``"demo"`` preset: clean, non-overlapping, and lesions large
relative to the pancreas, so a classifier saturates (macro-F1 1.0) and tells model variants apart
poorly. The ``"hard"`` preset (``preset="hard"``) keeps the rest of the model as it is (body,
pancreas, spacing, file quirks, per-case generators; a case's spacing and pancreas are even drawn
identically, while the draws after the lesion differ) and changes only the lesion:

* size: each case draws a target share lesion / (pancreas + lesion) from a two-piece log-normal
  through the real data's median 10 % and 10th/90th percentiles 1.3 % / 43 % (clipped to
  0.4-65 %); the lesion's radius is then fitted (a few secant steps that render the two label
  masks) until the labels give that share within ~5 %. Floors: the smallest semi-axis is at least
  max(1.2 mm, slice spacing / 4 + 0.6 mm), the lesion is centred on a slice and keeps at least
  8 voxels, so that it survives the slice averaging; this lifts the smallest shares of thick-slice
  cases. A lesion too large for the field of view is shrunk to fit, which trims the largest shares.
  The pancreas wraps only 50-100 % of the lesion's reach, so large lesions bulge out of it;
* subtype cues overlap: each cue (shape, density, texture, rim) follows the case's own subtype
  with probability 0.65 (shape) or 0.75 (the others), otherwise one of the two other subtypes',
  drawn independently per cue. Per source subtype 0 / 1 / 2 the cues are: shape round ellipsoid /
  lobulated / elongated and irregular; base density 0-75 / 95-185 / 35-120 HU (overlapping);
  speckle amplitude 0-10 / 15-40 / 0-10 HU; bright-rim contrast 0-35 / 0-35 / 35-130 HU (rim
  20-40 % of the thinnest semi-axis, at least 0.8 mm). So no single cue separates the subtypes,
  and even all four cues read without error allow a macro-F1 of only about 0.89 (Bayes-optimal
  vote at the real class frequencies), not 1.0.

The hard preset draws its extra numbers from the case's own generator, only on its own code path,
so the demo preset's files are byte-identical to those written before the presets existed.

Slice thickness is simulated by rendering several sub-slices per voxel in z and averaging them
(partial volume), then a small in-plane blur and correlated Gaussian noise (10-20 HU) are added.

Quirks of the real files that are reproduced: images stored as int16, int32 or float64 (cycled by
case number) in Hounsfield units; LPS orientation (affine ``diag(-sx, -sy, sz)`` plus an origin,
qform and sform code 1); masks stored as float32 or float64 with pancreas written as
``1.0000152587890625`` in about three cases of four; z spacing 1-5 mm and equal x/y spacing
0.6-0.9 mm, drawn per case.

Every case draws from its own random generator, derived from ``(seed, case_id)``, so a case does
not depend on which other cases are generated or in which order, and cases can be built in
parallel; the same seed gives byte-identical files (nibabel writes gzip with mtime 0).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from pancreas_mtl.data.labels import LESION_LABEL, PANCREAS_LABEL, SUBTYPES
from pancreas_mtl.data.quiz_layout import (
    LABELLED_SPLITS,
    image_file_name,
    labelled_case_id,
    mask_file_name,
    test_case_id,
)
from pancreas_mtl.data.validation import process_pool
from pancreas_mtl.errors import UserInputError

log = logging.getLogger("pancreas_mtl.data.synthetic")

#: Cases per subtype (0, 1, 2) for train and validation, and the number of test images.
#: Same class ratios as the real quiz split (train 62/106/84, validation 9/15/12, test 72).
DEFAULT_COUNTS: dict = {"train": (12, 20, 16), "validation": (4, 6, 5), "test": 12}

#: Field of view in mm (x, y, z); at ~0.75 mm in-plane and 3 mm slices this is ~64 x 64 x 32 voxels.
DEFAULT_FOV_MM: tuple[float, float, float] = (48.0, 48.0, 96.0)
#: The smallest field of view that still holds the whole lesion.
MIN_FOV_MM: tuple[float, float, float] = (40.0, 40.0, 64.0)

#: Real class frequencies (train split); hidden subtypes of test cases are drawn with these weights.
SUBTYPE_WEIGHTS = (62, 106, 84)

#: How the real masks store pancreas in about three cases of four (1 + 2**-16).
PANCREAS_QUIRK_VALUE = 1.0000152587890625
PANCREAS_QUIRK_PROBABILITY = 0.75

#: Image dtypes, cycled by case number (mostly int16, like the real data).
IMAGE_DTYPES = (np.int16, np.int32, np.int16, np.float64)
MASK_DTYPES = (np.float32, np.float64)

#: Slice spacings (mm) and their probabilities; in-plane spacing is k/512 mm for a display
#: field of view k in [310, 460] mm, i.e. 0.605-0.898 mm, as a scanner would write it.
Z_SPACINGS_MM = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
Z_SPACING_PROBS = (0.08, 0.10, 0.15, 0.15, 0.32, 0.10, 0.10)
DISPLAY_FOV_MM = (310, 460)

#: Sub-slices are rendered at most this far apart (mm) and averaged into one slice.
SUBSLICE_MM = 1.0
HU_MIN, HU_MAX = -1024.0, 3071.0

#: The presets: "demo" (clean cues, large lesions) and "hard" (see the module docstring).
PRESETS = ("demo", "hard")

#: Hard preset: the target share lesion / (pancreas + lesion) of a case is log-normal with a
#: different spread below and above the median (a two-piece log-normal), so that its median and
#: 10th/90th percentiles are those of the real data; draws are clipped to HARD_SHARE_RANGE.
HARD_SHARE_MEDIAN = 0.10
HARD_SHARE_Q10, HARD_SHARE_Q90 = 0.013, 0.43
HARD_SHARE_RANGE = (0.004, 0.65)
#: Hard preset: the smallest semi-axis of a lesion (mm) is at least this, and at least a quarter of
#: the slice spacing plus 0.6 mm; the lesion is centred on a slice. Together they keep a small lesion
#: from averaging out below the labels' 0.5 threshold when the slices are thick. This floor lifts
#: the smallest target shares of thick-slice cases (measured: 0.8-3 % at the least with 5 mm slices,
#: by shape; about 0.4-1.5 % with 1-3 mm slices).
HARD_MIN_SEMI_AXIS_MM = 1.2
#: Hard preset: the probability that a cue (shape, density, texture, rim) follows the case's own
#: subtype; otherwise it follows one of the other two subtypes, picked at random.
HARD_TYPICAL_PROB = {"shape": 0.65, "density": 0.75, "texture": 0.75, "rim": 0.75}
#: Hard preset, per cue source subtype (0, 1, 2): lesion base density (HU, uniform range),
#: speckle amplitude (HU) and bright-rim contrast (HU). The density ranges overlap.
HARD_DENSITY_HU = ((0.0, 75.0), (95.0, 185.0), (35.0, 120.0))
HARD_SPECKLE_HU = ((0.0, 10.0), (15.0, 40.0), (0.0, 10.0))
HARD_RIM_HU = ((0.0, 35.0), (0.0, 35.0), (35.0, 130.0))
#: Hard preset: the pancreas swells to wrap only this fraction (uniform range) of the lesion's
#: reach across it, so large lesions bulge out of it (the demo preset wraps them whole).
HARD_WRAP = (0.5, 1.0)
#: Hard preset: a lesion keeps at least this many voxels after sampling.
HARD_MIN_LESION_VOXELS = 8
_HARD_SHAPES = ("ellipsoid", "lobes", "irregular")

_CASE_ID = re.compile(r"^quiz_(?:(?P<subtype>\d)_)?(?P<number>\d{3})$")


class SyntheticQuizError(UserInputError, ValueError):
    """Bad arguments for the synthetic quiz (output folder, counts, seed, field of view, preset)."""


# --------------------------------------------------------------------------- public API


def make_synthetic_quiz(
    out_dir: str | Path,
    seed: int = 0,
    counts: dict | None = None,
    fov_mm=DEFAULT_FOV_MM,
    n_workers: int = 1,
    preset: str = "demo",
) -> list[Path]:
    """Write the quiz layout under ``out_dir``; return the written files (sorted).

    Layout (``NNN`` is unique across the dataset, ``S`` the subtype digit)::

        out_dir/train/subtypeS/quiz_S_NNN_0000.nii.gz   image (HU)
        out_dir/train/subtypeS/quiz_S_NNN.nii.gz        mask: 0 background, 1 pancreas, 2 lesion
        out_dir/validation/subtypeS/...                 same
        out_dir/test/quiz_NNN_0000.nii.gz               images only

    ``counts`` has keys ``train`` and ``validation`` (three ints: cases of subtype 0, 1, 2) and
    ``test`` (an int); it defaults to :data:`DEFAULT_COUNTS`. Files are written into a temporary
    sibling folder that is renamed to ``out_dir`` at the end, so an interrupted or failed run never
    leaves a half-written ``out_dir``. Raises :class:`SyntheticQuizError` (a ``ValueError``) if
    ``out_dir`` exists and is not an empty folder, or if an argument is invalid.

    ``preset`` is ``"demo"`` (clean subtype cues, large lesions) or ``"hard"`` (realistic lesion
    sizes, overlapping subtype cues); see the module docstring.
    """
    out = Path(out_dir)
    preset = _check_preset(preset)
    seed = _check_seed(seed)
    counts = normalize_counts(counts)
    fov = _check_fov(fov_mm)
    n_workers = _check_workers(n_workers)
    _refuse_existing(out)

    tasks = _plan_cases(seed, counts, fov, preset)
    n_workers = max(1, min(n_workers, len(tasks)))
    log.info(
        "writing %d synthetic cases (train %s, validation %s, test %d; seed %d, preset %s) to %s with %d worker(s)",
        len(tasks),
        list(counts["train"]),
        list(counts["validation"]),
        counts["test"],
        seed,
        preset,
        out,
        n_workers,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    start = time.perf_counter()
    try:
        # a folder for each split and subtype that has cases, as a data set of fewer subtypes would be laid out
        for split in LABELLED_SPLITS:
            for s in SUBTYPES:
                if counts[split][s]:
                    (tmp / split / f"subtype{s}").mkdir(parents=True)
        if counts["test"]:
            (tmp / "test").mkdir()
        relative = _run_tasks(tmp, tasks, n_workers)
        _refuse_existing(out)  # someone may have written there meanwhile
        if out.is_dir():
            out.rmdir()  # an empty folder, e.g. made by the caller
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d files for %d cases in %.1f s", len(relative), len(tasks), time.perf_counter() - start)
    return sorted(out / r for r in relative)


def synthesize_case(
    case_id: str,
    subtype: int | None,
    seed: int,
    fov_mm=DEFAULT_FOV_MM,
    preset: str = "demo",
) -> tuple[nib.Nifti1Image, nib.Nifti1Image | None]:
    """Build one case: ``(image, mask)`` as NIfTI images in memory (nothing is written).

    ``case_id`` is ``quiz_S_NNN`` (labelled) or ``quiz_NNN`` (test); the case's random generator is
    derived from ``(seed, case_id)`` alone. ``subtype`` is 0, 1 or 2; ``None`` (test cases) draws a
    hidden subtype from the case's own stream, see :func:`resolve_subtype`. The mask is always
    computed and returned; :func:`make_synthetic_quiz` writes it only for train/validation cases.
    ``preset`` is ``"demo"`` or ``"hard"`` (see the module docstring).
    """
    preset = _check_preset(preset)
    seed = _check_seed(seed)
    fov = _check_fov(fov_mm)
    subtype = resolve_subtype(case_id, subtype, seed)
    number = _case_number(case_id)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _case_key(case_id), 0]))

    image_hu, labels, spacing = _render_case(rng, subtype, fov, preset)

    # File-level quirks, drawn after the anatomy so they never change it.
    image_dtype = (
        IMAGE_DTYPES[number % len(IMAGE_DTYPES)]
        if number is not None
        else IMAGE_DTYPES[_case_key(case_id) % len(IMAGE_DTYPES)]
    )
    mask_dtype = MASK_DTYPES[int(rng.integers(len(MASK_DTYPES)))]
    quirk = bool(rng.random() < PANCREAS_QUIRK_PROBABILITY)
    affine = _lps_affine(spacing, rng)

    image = _nifti(np.round(image_hu).astype(image_dtype), affine)
    mask_values = labels.astype(np.float64)
    if quirk:
        mask_values[labels == PANCREAS_LABEL] = PANCREAS_QUIRK_VALUE
    mask = _nifti(mask_values.astype(mask_dtype), affine)
    return image, mask


def resolve_subtype(case_id: str, subtype: int | None, seed: int) -> int:
    """The lesion subtype of a case: ``subtype`` itself, or for ``None`` the hidden one of a test case.

    A hidden subtype is drawn with the real class frequencies from a stream of its own derived from
    ``(seed, case_id)``, so it can be looked up cheaply (e.g. to score test predictions).
    """
    m = _CASE_ID.match(case_id) if isinstance(case_id, str) else None
    if m is None:
        raise SyntheticQuizError(f"case id {case_id!r} is not of the form quiz_S_NNN or quiz_NNN")
    if subtype is None:
        rng = np.random.default_rng(np.random.SeedSequence([_check_seed(seed), _case_key(case_id), 1]))
        weights = np.asarray(SUBTYPE_WEIGHTS, dtype=float)
        return int(rng.choice(len(SUBTYPES), p=weights / weights.sum()))
    if isinstance(subtype, bool) or not isinstance(subtype, (int, np.integer)) or int(subtype) not in SUBTYPES:
        raise SyntheticQuizError(f"subtype of {case_id} must be 0, 1, 2 or None, got {subtype!r}")
    if m.group("subtype") is not None and int(m.group("subtype")) != int(subtype):
        raise SyntheticQuizError(f"case id {case_id} names subtype {m.group('subtype')} but subtype={subtype}")
    return int(subtype)


def normalize_counts(counts: dict | None) -> dict:
    """``counts`` checked and normalised to ``{"train": (a, b, c), "validation": (a, b, c), "test": n}``."""
    if counts is None:
        counts = DEFAULT_COUNTS
    if not isinstance(counts, dict):
        raise SyntheticQuizError(f"counts must be a mapping with keys train, validation, test; got {counts!r}")
    problems = []
    expected = {"train", "validation", "test"}
    for key in sorted(set(counts) - expected):
        problems.append(f"unknown key {key!r} (expected train, validation, test)")
    for key in sorted(expected - set(counts)):
        problems.append(f"missing key {key!r}")
    result: dict = {}
    for split in LABELLED_SPLITS:
        value = counts.get(split)
        if split not in counts:
            continue
        if (
            isinstance(value, (str, bytes))
            or not hasattr(value, "__len__")
            or len(value) != len(SUBTYPES)
            or not all(_is_count(v) for v in value)
        ):
            problems.append(f"{split} must be three non-negative integers (cases of subtype 0, 1, 2), got {value!r}")
            continue
        result[split] = tuple(int(v) for v in value)
    if "test" in counts:
        if _is_count(counts["test"]):
            result["test"] = int(counts["test"])
        else:
            problems.append(f"test must be a non-negative integer, got {counts['test']!r}")
    if not problems:
        total = sum(result["train"]) + sum(result["validation"]) + result["test"]
        if total > 1000:
            problems.append(f"at most 1000 cases fit three-digit case numbers, asked for {total}")
        if total == 0:
            problems.append("asked for no cases at all")
    if problems:
        raise SyntheticQuizError("invalid synthetic quiz counts", problems)
    return result


# --------------------------------------------------------------------------- planning and running


@dataclass(frozen=True)
class _Task:
    relative_dir: str
    case_id: str
    subtype: int | None
    write_mask: bool
    seed: int
    fov: tuple[float, float, float]
    preset: str = "demo"


def _plan_cases(seed: int, counts: dict, fov, preset: str = "demo") -> list[_Task]:
    """Every case of the dataset, with case numbers drawn without replacement from 000-999."""
    total = sum(counts["train"]) + sum(counts["validation"]) + counts["test"]
    rng = np.random.default_rng(np.random.SeedSequence([seed, _case_key("case numbers")]))
    numbers = iter(rng.choice(1000, size=total, replace=False).tolist())
    tasks: list[_Task] = []
    for split in LABELLED_SPLITS:
        for s, n in zip(SUBTYPES, counts[split]):
            for number in sorted(next(numbers) for _ in range(n)):
                tasks.append(_Task(f"{split}/subtype{s}", labelled_case_id(s, number), s, True, seed, fov, preset))
    for number in sorted(next(numbers) for _ in range(counts["test"])):
        tasks.append(_Task("test", test_case_id(number), None, False, seed, fov, preset))
    return tasks


def _write_case(root: Path, task: _Task) -> list[str]:
    """Synthesize one case and write its files under ``root``; return their relative paths."""
    image, mask = synthesize_case(task.case_id, task.subtype, task.seed, task.fov, task.preset)
    written = [f"{task.relative_dir}/{image_file_name(task.case_id)}"]
    nib.save(image, root / written[0])
    if task.write_mask:
        written.append(f"{task.relative_dir}/{mask_file_name(task.case_id)}")
        nib.save(mask, root / written[1])
    return written


def _run_tasks(root: Path, tasks: list[_Task], n_workers: int) -> list[str]:
    written: list[str] = []
    done = 0

    def progress() -> None:
        if done % 10 == 0 or done == len(tasks):
            log.info("generated %d/%d cases", done, len(tasks))

    if n_workers == 1:
        for task in tasks:
            written += _write_case(root, task)
            done += 1
            progress()
        return written

    executor = process_pool(n_workers)
    try:
        pending = {executor.submit(_write_case, root, task) for task in tasks}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                written += future.result()  # re-raises a worker's error
                done += 1
                progress()
    finally:
        # On failure: drop queued cases and let running ones end before the folder is removed.
        executor.shutdown(wait=True, cancel_futures=True)
    return written


# --------------------------------------------------------------------------- checks


def _is_count(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SyntheticQuizError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_preset(preset) -> str:
    if not isinstance(preset, str) or preset not in PRESETS:
        allowed = ", ".join(repr(p) for p in PRESETS)
        raise SyntheticQuizError(f"preset must be one of {allowed}, got {preset!r}")
    return preset


def _check_workers(n_workers) -> int:
    if isinstance(n_workers, bool) or not isinstance(n_workers, (int, np.integer)) or n_workers < 1:
        raise SyntheticQuizError(f"n_workers must be a positive integer, got {n_workers!r}")
    return int(n_workers)


def _check_fov(fov_mm) -> tuple[float, float, float]:
    try:
        fov = tuple(float(v) for v in fov_mm)
    except (TypeError, ValueError):
        fov = ()
    if len(fov) != 3 or not all(np.isfinite(fov)):
        raise SyntheticQuizError(f"fov_mm must be three numbers (x, y, z in mm), got {fov_mm!r}")
    if any(f < m for f, m in zip(fov, MIN_FOV_MM)):
        raise SyntheticQuizError(f"fov_mm {fov} is too small to hold the anatomy; the minimum is {MIN_FOV_MM}")
    return fov


def _refuse_existing(out: Path) -> None:
    if out.is_dir():
        if any(out.iterdir()):
            raise SyntheticQuizError(
                f"refusing to write the synthetic quiz into {out}: it exists and is not empty "
                "(remove it or choose another folder)"
            )
    elif out.exists() or out.is_symlink():
        raise SyntheticQuizError(f"refusing to write the synthetic quiz to {out}: it exists and is not a folder")


def _case_key(text: str) -> int:
    """A stable 64-bit integer for a string (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def _case_number(case_id: str) -> int | None:
    m = _CASE_ID.match(case_id)
    return int(m.group("number")) if m else None


# --------------------------------------------------------------------------- rendering


@dataclass
class _Grid:
    """Voxel-centre coordinates (mm, origin at the centre of the field of view)."""

    x: np.ndarray  # (nx,)
    y: np.ndarray  # (ny,)
    z: np.ndarray  # (nz * k,) sub-slice centres
    k: int  # sub-slices per slice
    shape: tuple[int, int, int]  # final (nx, ny, nz)

    @property
    def fine_shape(self) -> tuple[int, int, int]:
        return (len(self.x), len(self.y), len(self.z))

    def coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.x[:, None, None], self.y[None, :, None], self.z[None, None, :]

    def collapse(self, fine: np.ndarray) -> np.ndarray:
        """Average the sub-slices of each slice (slice-thickness partial volume)."""
        nx, ny, nz = self.shape
        return fine.reshape(nx, ny, nz, self.k).mean(axis=-1)

    def expand(self, coarse: np.ndarray) -> np.ndarray:
        """Repeat a per-slice array over the sub-slices."""
        return np.repeat(coarse, self.k, axis=2)


def _make_grid(spacing: tuple[float, float, float], fov) -> _Grid:
    sx, sy, sz = spacing
    nx, ny, nz = (max(1, int(round(f / s))) for f, s in zip(fov, spacing))
    k = max(1, int(np.ceil(sz / SUBSLICE_MM - 1e-9)))
    x = (np.arange(nx) - (nx - 1) / 2) * sx
    y = (np.arange(ny) - (ny - 1) / 2) * sy
    zc = (np.arange(nz) - (nz - 1) / 2) * sz
    offsets = ((np.arange(k) + 0.5) / k - 0.5) * sz
    z = (zc[:, None] + offsets[None, :]).ravel()
    return _Grid(x, y, z, k, (nx, ny, nz))


def _draw_spacing(rng: np.random.Generator) -> tuple[float, float, float]:
    sz = float(rng.choice(Z_SPACINGS_MM, p=np.asarray(Z_SPACING_PROBS) / sum(Z_SPACING_PROBS)))
    sxy = float(rng.integers(DISPLAY_FOV_MM[0], DISPLAY_FOV_MM[1] + 1)) / 512.0  # exact in float32
    return (sxy, sxy, sz)


def _lps_affine(spacing, rng: np.random.Generator) -> np.ndarray:
    origin = (
        round(float(rng.uniform(150.0, 250.0)), 3),
        round(float(rng.uniform(40.0, 390.0)), 3),
        round(float(rng.uniform(-450.0, 1800.0)), 1),
    )
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = origin
    return affine.astype(np.float32).astype(np.float64)  # what the header will store


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units(xyz="mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def _catmull_rom_matrix(coords: np.ndarray, start: float, cell: float, n: int) -> np.ndarray:
    """Weights that interpolate a 1D lattice (``start + i * cell``) at ``coords`` (Catmull-Rom)."""
    u = (coords - start) / cell
    i = np.floor(u).astype(int)
    t = u - i
    weights = (
        0.5 * (-(t**3) + 2 * t**2 - t),
        0.5 * (3 * t**3 - 5 * t**2 + 2),
        0.5 * (-3 * t**3 + 4 * t**2 + t),
        0.5 * (t**3 - t**2),
    )
    matrix = np.zeros((len(coords), n))
    rows = np.arange(len(coords))
    for offset, w in zip((-1, 0, 1, 2), weights):
        np.add.at(matrix, (rows, np.clip(i + offset, 0, n - 1)), w)
    return matrix


def _smooth_field(rng: np.random.Generator, grid: _Grid, fov, cell_mm: float) -> np.ndarray:
    """A smooth random field (about unit variance, correlation length ~cell_mm) on the fine grid.

    Defined on a lattice in physical space, so it is the same pattern whatever the case's spacing.
    """
    mats = []
    shape = []
    for coords, extent in zip((grid.x, grid.y, grid.z), fov):
        n = int(np.ceil(extent / cell_mm)) + 4
        start = -extent / 2 - 1.5 * cell_mm
        mats.append(_catmull_rom_matrix(coords, start, cell_mm, n))
        shape.append(n)
    lattice = rng.standard_normal(shape)
    field = np.einsum("ia,abc->ibc", mats[0], lattice)
    field = np.einsum("jb,ibc->ijc", mats[1], field)
    field = np.einsum("kc,ijc->ijk", mats[2], field)
    return field.astype(np.float32)


def _fraction(sdf: np.ndarray, width: float) -> np.ndarray:
    """Soft occupancy from a signed distance (negative inside), a linear ramp ``width`` mm wide."""
    return np.clip(0.5 - sdf / width, 0.0, 1.0).astype(np.float32)


def _tube_sdf(grid: _Grid, centres: np.ndarray, radii: np.ndarray, margin: float) -> np.ndarray:
    """Signed distance to a union of spheres, exact within ``margin`` mm of the surface, else clipped."""
    sdf = np.full(grid.fine_shape, margin, dtype=np.float32)
    axes = (grid.x, grid.y, grid.z)
    for c, r in zip(centres, radii):
        reach = r + margin
        sl = []
        parts = []
        for a, coords in enumerate(axes):
            lo = np.searchsorted(coords, c[a] - reach, side="left")
            hi = np.searchsorted(coords, c[a] + reach, side="right")
            sl.append(slice(lo, hi))
            parts.append(coords[lo:hi] - c[a])
        if any(len(p) == 0 for p in parts):
            continue
        d2 = parts[0][:, None, None] ** 2 + parts[1][None, :, None] ** 2 + parts[2][None, None, :] ** 2
        d = (np.sqrt(d2) - r).astype(np.float32)
        block = sdf[tuple(sl)]
        np.minimum(block, d, out=block)
    return sdf


def _ellipsoid_sdf(grid: _Grid, centre, rotation: np.ndarray, semi_axes) -> np.ndarray:
    """Approximate signed distance to an ellipsoid (Quilez' k0 * (k0 - 1) / k1 bound)."""
    X, Y, Z = grid.coords()
    p = (X - centre[0], Y - centre[1], Z - centre[2])
    # local coordinates: rows of ``rotation`` are the ellipsoid's axes
    local = [rotation[i, 0] * p[0] + rotation[i, 1] * p[1] + rotation[i, 2] * p[2] for i in range(3)]
    a = np.asarray(semi_axes, dtype=float)
    k0 = np.sqrt(sum((local[i] / a[i]) ** 2 for i in range(3)))
    k1 = np.sqrt(sum((local[i] / a[i] ** 2) ** 2 for i in range(3)))
    return (k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)).astype(np.float32)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _frame(tangent: np.ndarray, rng: np.random.Generator, max_tilt_deg: float) -> np.ndarray:
    """Rows: an axis near ``tangent`` (tilted up to ``max_tilt_deg``) and two perpendicular axes."""
    t = tangent / np.linalg.norm(tangent)
    helper = np.array([0.0, 0.0, 1.0]) if abs(t[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    n1 = np.cross(t, helper)
    n1 /= np.linalg.norm(n1)
    n2 = np.cross(t, n1)
    tilt = np.deg2rad(rng.uniform(0.0, max_tilt_deg))
    phi = rng.uniform(0.0, 2 * np.pi)
    a = np.cos(tilt) * t + np.sin(tilt) * (np.cos(phi) * n1 + np.sin(phi) * n2)
    a /= np.linalg.norm(a)
    b = np.cross(a, helper if abs(a @ helper) < 0.9 else np.array([0.0, 1.0, 0.0]))
    b /= np.linalg.norm(b)
    c = np.cross(a, b)
    spin = rng.uniform(0.0, 2 * np.pi)
    b, c = np.cos(spin) * b + np.sin(spin) * c, -np.sin(spin) * b + np.cos(spin) * c
    return np.stack([a, b, c])


@dataclass
class _Pancreas:
    centres: np.ndarray  # (n, 3) mm
    radii: np.ndarray  # (n,)
    tangents: np.ndarray  # (n, 3)
    normals_xy: np.ndarray  # (n, 3) in-plane normals
    arclength: np.ndarray  # (n,)


def _draw_pancreas(rng: np.random.Generator, fov) -> _Pancreas:
    n = 240
    t = np.linspace(0.0, 1.0, n)
    length = rng.uniform(36.0, 44.0)
    bend = rng.uniform(3.0, 8.0)
    wiggle = rng.uniform(0.0, 2.0)
    phase = rng.uniform(0.0, 2 * np.pi)
    z_span = rng.uniform(16.0, 30.0) * rng.choice([-1.0, 1.0])
    z_bow = rng.uniform(-4.0, 4.0)
    x = (t - 0.5) * length
    y = bend * (np.sin(np.pi * t) - 0.64) + wiggle * np.sin(2 * np.pi * t + phase)
    z = z_span * (t - 0.5) + z_bow * (np.sin(np.pi * t) - 0.64)
    angle = np.deg2rad(rng.uniform(-25.0, 25.0)) + (np.pi if rng.random() < 0.5 else 0.0)
    ca, sa = np.cos(angle), np.sin(angle)
    shift = (rng.uniform(-3.0, 3.0), rng.uniform(-3.0, 3.0), rng.uniform(-0.08, 0.08) * fov[2])
    centres = np.stack([ca * x - sa * y + shift[0], sa * x + ca * y + shift[1], z + shift[2]], axis=1)

    r0 = rng.uniform(4.3, 5.3)
    radii = (
        r0 * (1.2 - 0.4 * t) * (1.0 + 0.08 * np.sin(2 * np.pi * rng.uniform(1.0, 2.5) * t + rng.uniform(0, 2 * np.pi)))
    )

    tangents = np.gradient(centres, axis=0)
    tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
    normals = np.stack([-tangents[:, 1], tangents[:, 0], np.zeros(n)], axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    arclength = np.concatenate([[0.0], np.cumsum(steps)])
    return _Pancreas(centres, radii, tangents, normals, arclength)


@dataclass
class _Lesion:
    centre: np.ndarray
    perp_extent: float  # how far the pancreas must reach from the centre across it to wrap it (mm)
    long_extent: float  # how far the lesion reaches along the pancreas (mm)
    margin: float | None = None  # pancreas beyond perp_extent (mm); None: drawn in _render_case


def _draw_lesion_geometry(rng: np.random.Generator, subtype: int, panc: _Pancreas, fov) -> tuple[_Lesion, dict]:
    """Where the lesion sits and its shape parameters; retried until it fits the field of view."""
    half = np.asarray(fov) / 2
    for _ in range(100):
        idx = int(rng.uniform(0.3, 0.65) * (len(panc.centres) - 1))
        tangent = panc.tangents[idx]
        offset = rng.normal(0.0, 0.6, 3)
        offset -= (offset @ tangent) * tangent  # across the pancreas, not along it
        centre = panc.centres[idx] + offset
        if subtype == 0:
            r = rng.uniform(5.0, 7.5)
            axes = r * rng.uniform(0.9, 1.1, 3)
            shape = {"kind": "ellipsoid", "rotation": _random_rotation(rng), "axes": axes}
            perp, long = float(axes.max()), float(axes.max())
        elif subtype == 1:
            r = rng.uniform(6.0, 8.0)
            n_lobes = int(rng.integers(4, 7))
            dirs = rng.standard_normal((n_lobes, 3))
            dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
            dist = r * rng.uniform(0.3, 0.45, n_lobes)
            lobe_r = r * rng.uniform(0.5, 0.65, n_lobes)
            centres = np.vstack([centre, centre + dirs * dist[:, None]])
            radii = np.concatenate([[r * rng.uniform(0.7, 0.8)], lobe_r])
            shape = {"kind": "lobes", "centres": centres, "radii": radii}
            perp = long = float(np.max(np.linalg.norm(centres - centre, axis=1) + radii))
        else:
            r = rng.uniform(5.5, 7.5)
            axes = np.array([r * rng.uniform(1.6, 2.1), r * rng.uniform(0.75, 0.9), r * rng.uniform(0.7, 0.85)])
            rotation = _frame(tangent, rng, 25.0)
            shape = {
                "kind": "irregular",
                "rotation": rotation,
                "axes": axes,
                "roughness": rng.uniform(0.8, 1.3),
                "rim": rng.uniform(1.6, 2.3),
            }
            perp, long = float(axes[1:].max()) + 1.0, float(axes[0]) + 1.0
        reach = max(perp, long) + 2.0
        if np.all(np.abs(centre) + reach <= half):
            return _Lesion(centre, perp, long), shape
    raise RuntimeError("could not place the lesion inside the field of view")  # pragma: no cover


# --------------------------------------------------------------------------- the hard preset's lesion

#: 90th percentile of the standard normal distribution.
_Z90 = 1.2815515655446004


@dataclass
class _Look:
    """What the hard preset's lesion looks like (HU and mm), and which subtype each cue follows."""

    density: float  # base density
    speckle: float  # amplitude of the speckle texture
    rim_contrast: float  # added in a rim along the lesion's edge
    rim_width: float
    share: float  # the target share lesion / (pancreas + lesion) the lesion was sized for
    sources: dict  # cue -> the subtype whose typical look it follows


def _cue_source(rng: np.random.Generator, subtype: int, typical_prob: float) -> int:
    """``subtype`` with probability ``typical_prob``, else one of the other subtypes at random."""
    if rng.random() < typical_prob:
        return subtype
    others = [s for s in SUBTYPES if s != subtype]
    return int(others[int(rng.integers(len(others)))])


def _draw_share(rng: np.random.Generator) -> float:
    """A target lesion share: two-piece log-normal through the real median and 10th/90th percentiles."""
    z = float(rng.standard_normal())
    log_median = np.log(HARD_SHARE_MEDIAN)
    sigma = (log_median - np.log(HARD_SHARE_Q10) if z < 0 else np.log(HARD_SHARE_Q90) - log_median) / _Z90
    return float(np.clip(HARD_SHARE_MEDIAN * np.exp(z * sigma), *HARD_SHARE_RANGE))


def _union_volume(centres: np.ndarray, radii: np.ndarray, step: float = 0.04) -> float:
    """Volume of a union of spheres, counted on a lattice (the spheres are about unit size)."""
    reach = float(np.max(np.linalg.norm(centres, axis=1) + radii))
    ax = np.arange(-reach, reach + step, step)
    inside = np.zeros((len(ax),) * 3, dtype=bool)
    for c, r in zip(centres, radii):
        d2 = (ax[:, None, None] - c[0]) ** 2 + (ax[None, :, None] - c[1]) ** 2 + (ax[None, None, :] - c[2]) ** 2
        inside |= d2 <= r * r
    return float(inside.sum()) * step**3


def _hard_unit_shape(rng: np.random.Generator, kind: str, tangent: np.ndarray) -> dict:
    """A lesion shape of about unit size; every length scales with the radius chosen later.

    ``volume``, ``perp`` (reach across the pancreas), ``long`` (reach along it) and ``thin`` (the
    smallest semi-axis, less the roughness) are for radius 1.
    """
    if kind == "ellipsoid":
        axes = rng.uniform(0.85, 1.2, 3)
        return {
            "kind": kind,
            "rotation": _random_rotation(rng),
            "axes": axes,
            "volume": 4.0 / 3.0 * np.pi * float(np.prod(axes)),
            "perp": float(axes.max()),
            "long": float(axes.max()),
            "thin": float(axes.min()),
        }
    if kind == "lobes":
        n_lobes = int(rng.integers(3, 7))
        dirs = rng.standard_normal((n_lobes, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        offsets = np.vstack([np.zeros(3), dirs * rng.uniform(0.3, 0.5, n_lobes)[:, None]])
        radii = np.concatenate([[rng.uniform(0.7, 0.85)], rng.uniform(0.5, 0.7, n_lobes)])
        reach = float(np.max(np.linalg.norm(offsets, axis=1) + radii))
        return {
            "kind": kind,
            "offsets": offsets,
            "radii": radii,
            "volume": _union_volume(offsets, radii),
            "perp": reach,
            "long": reach,
            "thin": float(radii[0]),
        }
    axes = np.array([rng.uniform(1.4, 2.1), rng.uniform(0.75, 0.95), rng.uniform(0.7, 0.9)])
    roughness = rng.uniform(0.06, 0.12)
    return {
        "kind": "irregular",
        "rotation": _frame(tangent, rng, 25.0),
        "axes": axes,
        "roughness": roughness,
        "volume": 4.0 / 3.0 * np.pi * float(np.prod(axes)),
        "perp": float(axes[1:].max() + roughness),
        "long": float(axes[0] + roughness),
        "thin": float(axes.min() - 1.5 * roughness),
    }


def _share_guess_radius(share: float, unit: dict, wrap: float, margin: float, panc: _Pancreas, idx: int) -> float:
    """A first guess of the radius at which the lesion takes ``share`` of pancreas + lesion.

    Treats the lesion as lying inside the pancreas, and the swollen pancreas (a union of spheres along
    its centre line, straightened out) as having cross-section radius ``max_j sqrt(r_j^2 - (s - s_j)^2)``
    at arclength ``s``; :func:`_fit_hard_lesion` then measures the share on the grid and corrects it.
    """
    s = np.linspace(-panc.radii[0] - 20.0, panc.arclength[-1] + panc.radii[-1] + 20.0, 400)

    def share_at(r: float) -> float:
        bulge = max(0.0, wrap * unit["perp"] * r + margin - panc.radii[idx])
        width = 0.6 * unit["long"] * r + 1.5
        radii = panc.radii + bulge * np.exp(-0.5 * ((panc.arclength - panc.arclength[idx]) / width) ** 2)
        reach2 = radii[None, :] ** 2 - (s[:, None] - panc.arclength[None, :]) ** 2
        area = np.pi * np.maximum(reach2, 0.0).max(axis=1)
        lesion = unit["volume"] * r**3
        return lesion / max(float(np.sum(0.5 * (area[1:] + area[:-1]) * np.diff(s))), lesion)

    lo, hi = 0.05, 40.0
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if share_at(mid) < share else (lo, mid)
    return hi


def _scaled_shape(unit: dict, centre: np.ndarray, r: float, field: np.ndarray | None) -> dict:
    """The lesion shape of :func:`_hard_unit_shape` at radius ``r`` (mm), as :func:`_lesion_sdf` takes it."""
    if unit["kind"] == "ellipsoid":
        return {"kind": "ellipsoid", "rotation": unit["rotation"], "axes": r * unit["axes"]}
    if unit["kind"] == "lobes":
        return {"kind": "lobes", "centres": centre + r * unit["offsets"], "radii": r * unit["radii"]}
    return {
        "kind": "irregular",
        "rotation": unit["rotation"],
        "axes": r * unit["axes"],
        "roughness": r * unit["roughness"],
        "field": field,
    }


def _draw_hard_lesion(
    rng: np.random.Generator, subtype: int, panc: _Pancreas, fov, spacing, grid: _Grid
) -> tuple[_Lesion, dict, _Look]:
    """The hard preset's lesion: geometry sized for a drawn target share, and its mixed-cue look."""
    sources = {cue: _cue_source(rng, subtype, p) for cue, p in HARD_TYPICAL_PROB.items()}
    share = _draw_share(rng)
    kind = _HARD_SHAPES[sources["shape"]]
    wrap = float(rng.uniform(*HARD_WRAP))
    margin = float(rng.uniform(0.8, 1.8))
    thin_min = max(HARD_MIN_SEMI_AXIS_MM, 0.25 * float(spacing[2]) + 0.6)
    slice_z = grid.z.reshape(-1, grid.k).mean(axis=1)
    half = np.asarray(fov) / 2
    best = None  # (largest radius that fits, centre, unit shape, first guess of the radius)
    for _ in range(60):
        idx = int(rng.uniform(0.3, 0.65) * (len(panc.centres) - 1))
        tangent = panc.tangents[idx]
        offset = rng.normal(0.0, 0.6, 3)
        offset -= (offset @ tangent) * tangent
        centre = panc.centres[idx] + offset
        # centred on a slice, so that a lesion half a slice thick survives the slice averaging
        centre[2] = slice_z[int(np.argmin(np.abs(slice_z - centre[2])))]
        unit = _hard_unit_shape(rng, kind, tangent)
        r_min = thin_min / unit["thin"]
        r_fit = float(np.min(half - np.abs(centre)) - 2.0) / max(unit["perp"], unit["long"])
        if r_fit < r_min:
            continue
        near = int(np.argmin(np.linalg.norm(panc.centres - centre, axis=1)))
        guess = max(_share_guess_radius(share, unit, wrap, margin, panc, near), r_min)
        if best is None or r_fit > best[0] or guess <= r_fit:
            best = (r_fit, centre, unit, guess)
        if guess <= r_fit:
            break
    if best is None:
        raise RuntimeError("could not place the lesion inside the field of view")  # pragma: no cover
    r_fit, centre, unit, guess = best
    field = _smooth_field(rng, grid, fov, cell_mm=4.0) if kind == "irregular" else None
    # the pancreas reaches past the lesion's centre by this much more (it is off the centre line)
    off_axis = float(np.min(np.linalg.norm(panc.centres - centre, axis=1)))

    def make(r: float) -> tuple[_Lesion, dict]:
        lesion = _Lesion(centre, wrap * unit["perp"] * r + off_axis, unit["long"] * r, margin)
        return lesion, _scaled_shape(unit, centre, r, field)

    r = _fit_hard_lesion(
        share, make, panc, grid, fov, float(spacing[0]), thin_min / unit["thin"], r_fit, min(guess, r_fit)
    )
    lesion, shape = make(r)
    look = _Look(
        density=float(rng.uniform(*HARD_DENSITY_HU[sources["density"]])),
        speckle=float(rng.uniform(*HARD_SPECKLE_HU[sources["texture"]])),
        rim_contrast=float(rng.uniform(*HARD_RIM_HU[sources["rim"]])),
        rim_width=max(0.8, float(rng.uniform(0.2, 0.4)) * unit["thin"] * r),
        share=share,
        sources=sources,
    )
    return lesion, shape, look


def _fit_hard_lesion(
    share: float,
    make,
    panc: _Pancreas,
    grid: _Grid,
    fov,
    edge: float,
    r_min: float,
    r_max: float,
    r_guess: float,
) -> float:
    """The radius in ``[r_min, r_max]`` whose labels (as :func:`_render_case` computes them) give
    the lesion ``share`` of pancreas + lesion, within ~5%, and at least HARD_MIN_LESION_VOXELS voxels.

    ``make(r)`` gives the lesion and its shape at radius ``r``. A few secant steps in log-log space;
    each step renders the two label masks (no intensities); ``edge`` is the partial-volume ramp.
    """

    def measure(r: float) -> tuple[float, int]:
        lesion, shape = make(r)
        radii = _swollen_radii(panc, lesion, lesion.margin)
        panc_label = grid.collapse(_fraction(_tube_sdf(grid, panc.centres, radii, margin=4.0), edge)) >= 0.5
        les_label = grid.collapse(_fraction(_lesion_sdf(grid, lesion, shape, None, fov), edge)) >= 0.5
        n_lesion = int(les_label.sum())
        return n_lesion / max(1, int((panc_label | les_label).sum())), n_lesion

    r = float(np.clip(r_guess, r_min, r_max))
    tried: list[tuple[float, float, int]] = []  # (r, share, lesion voxels)
    for _ in range(8):
        got, n_lesion = measure(r)
        tried.append((r, got, n_lesion))
        if n_lesion < HARD_MIN_LESION_VOXELS:
            if r >= r_max:
                break
            r = min(r_max, 1.3 * r)
            continue
        if abs(np.log(got / share)) < 0.05:
            break
        ok = [t for t in tried if t[2] >= HARD_MIN_LESION_VOXELS and t[1] > 0]
        if len(ok) >= 2 and ok[-1][0] != ok[-2][0] and ok[-1][1] != ok[-2][1]:
            (r1, s1, _), (r2, s2, _) = ok[-2], ok[-1]
            slope = np.log(s2 / s1) / np.log(r2 / r1)
            slope = float(np.clip(slope, 0.5, 4.0)) if np.isfinite(slope) else 2.0
        else:
            slope = 2.0
        new = float(np.clip(r * (share / got) ** (1.0 / slope), r_min, r_max))
        if new == r:
            break  # pinned at a bound
        r = new
    usable = [t for t in tried if t[2] >= HARD_MIN_LESION_VOXELS]
    if not usable:
        raise RuntimeError("synthetic lesion is too small to survive sampling")  # pragma: no cover
    return min(usable, key=lambda t: abs(np.log(max(t[1], 1e-9) / share)))[0]


def _hard_lesion_hu(rng: np.random.Generator, look: _Look, les_sdf: np.ndarray, grid: _Grid, edge: float) -> np.ndarray:
    """Lesion intensities of the hard preset: base density, speckle, and a bright rim (all optional)."""
    speckle = rng.standard_normal(grid.shape)
    speckle = ndimage.gaussian_filter(speckle, sigma=(0.6, 0.6, 0.3))
    speckle /= speckle.std()
    hu = look.density + look.speckle * grid.expand(speckle).astype(np.float32)
    core = _fraction(les_sdf + look.rim_width, edge)
    return (hu + look.rim_contrast * (1.0 - core)).astype(np.float32)


def _lesion_sdf(grid: _Grid, lesion: _Lesion, shape: dict, rng: np.random.Generator, fov) -> np.ndarray:
    if shape["kind"] == "ellipsoid":
        return _ellipsoid_sdf(grid, lesion.centre, shape["rotation"], shape["axes"])
    if shape["kind"] == "lobes":
        return _tube_sdf(grid, shape["centres"], shape["radii"], margin=3.0)
    sdf = _ellipsoid_sdf(grid, lesion.centre, shape["rotation"], shape["axes"])
    field = shape.get("field")  # the hard preset draws its field up front (it sizes the lesion first)
    if field is None:
        field = _smooth_field(rng, grid, fov, cell_mm=4.0)
    return sdf + shape["roughness"] * field


def _swollen_radii(panc: _Pancreas, lesion: _Lesion, margin: float) -> np.ndarray:
    """Pancreas radii swollen around the lesion so that it reaches ``lesion.perp_extent + margin``."""
    idx = int(np.argmin(np.linalg.norm(panc.centres - lesion.centre, axis=1)))
    bulge = max(0.0, lesion.perp_extent + margin - panc.radii[idx])
    width = 0.6 * lesion.long_extent + 1.5
    return panc.radii + bulge * np.exp(-0.5 * ((panc.arclength - panc.arclength[idx]) / width) ** 2)


def _render_case(
    rng: np.random.Generator, subtype: int, fov, preset: str = "demo"
) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Image (float HU), labels (uint8) and spacing of one case.

    The hard preset changes only the lesion (placement, shape, size, intensities) and how far the
    pancreas swells around it; the demo preset's draws are exactly those it always made.
    """
    spacing = _draw_spacing(rng)
    grid = _make_grid(spacing, fov)
    edge = float(spacing[0])  # partial-volume ramp width in mm

    panc = _draw_pancreas(rng, fov)
    look = None
    if preset == "hard":
        lesion, shape, look = _draw_hard_lesion(rng, subtype, panc, fov, spacing, grid)
    else:
        lesion, shape = _draw_lesion_geometry(rng, subtype, panc, fov)

    # The pancreas swells around the lesion so that the lesion sits (mostly) inside it.
    margin = rng.uniform(0.8, 1.8) if lesion.margin is None else lesion.margin
    radii = _swollen_radii(panc, lesion, margin)

    # --- tissue values (HU), with per-case jitter
    offset = rng.normal(0.0, 4.0)  # scanner calibration
    soft_hu = rng.uniform(40.0, 60.0)
    fat_hu = rng.uniform(-115.0, -85.0)
    pancreas_hu = rng.uniform(92.0, 112.0)
    vessel_hu = rng.uniform(130.0, 160.0)

    # --- body: soft tissue with smooth variation and fat islands
    image = soft_hu + 6.0 * _smooth_field(rng, grid, fov, cell_mm=10.0)
    fat_field = _smooth_field(rng, grid, fov, cell_mm=7.0)
    fat = np.clip((fat_field - rng.uniform(0.55, 0.85)) / 0.3 + 0.5, 0.0, 1.0)
    image = image * (1 - fat) + fat_hu * fat

    # --- a contrast-filled vessel running beside the pancreas
    side = rng.choice([-1.0, 1.0])
    vessel_centres = panc.centres + side * rng.uniform(14.0, 17.0) * panc.normals_xy
    vessel_r = np.full(len(vessel_centres), rng.uniform(2.0, 3.0))
    vessel = _fraction(_tube_sdf(grid, vessel_centres, vessel_r, margin=2.0), edge)
    image = image * (1 - vessel) + vessel_hu * vessel

    # --- bowel gas pockets (with a soft-tissue wall), kept away from the pancreas
    for _ in range(int(rng.integers(0, 3))):
        r_air = rng.uniform(2.5, 5.0)
        for _attempt in range(30):
            c = rng.uniform(-0.5, 0.5, 3) * (np.asarray(fov) - 2 * r_air - 4.0)
            if np.min(np.linalg.norm(panc.centres - c, axis=1) - radii) > r_air + 8.0:
                break
        else:
            continue
        air_sdf = _ellipsoid_sdf(grid, c, _random_rotation(rng), r_air * rng.uniform(0.8, 1.25, 3))
        wall = _fraction(air_sdf - 1.5, edge)
        image = image * (1 - wall) + (soft_hu - 10.0) * wall
        air = _fraction(air_sdf, edge)
        image = image * (1 - air) + (-1000.0) * air

    # --- pancreas with its fat rim, lobular texture
    panc_sdf = _tube_sdf(grid, panc.centres, radii, margin=4.0)
    rim = rng.uniform(0.4, 0.8) * _fraction(panc_sdf - rng.uniform(1.0, 2.5), edge)
    image = image * (1 - rim) + fat_hu * rim
    panc_frac = _fraction(panc_sdf, edge)
    pancreas_tex = pancreas_hu + 6.0 * _smooth_field(rng, grid, fov, cell_mm=3.0)
    image = image * (1 - panc_frac) + pancreas_tex * panc_frac

    # --- the lesion
    les_sdf = _lesion_sdf(grid, lesion, shape, rng, fov)
    les_frac = _fraction(les_sdf, edge)
    if look is not None:
        lesion_hu = _hard_lesion_hu(rng, look, les_sdf, grid, edge)
    elif subtype == 0:
        lesion_hu = np.float32(rng.uniform(0.0, 20.0))
    elif subtype == 1:
        base = rng.uniform(170.0, 200.0)
        speckle = rng.standard_normal(grid.shape)
        speckle = ndimage.gaussian_filter(speckle, sigma=(0.6, 0.6, 0.3))
        speckle /= speckle.std()
        lesion_hu = base + rng.uniform(30.0, 45.0) * grid.expand(speckle).astype(np.float32)
    else:
        core = _fraction(les_sdf + shape["rim"], edge)
        rim_hu = rng.uniform(190.0, 215.0)
        core_hu = rng.uniform(40.0, 60.0)
        lesion_hu = rim_hu * (1 - core) + core_hu * core
    image = image * (1 - les_frac) + lesion_hu * les_frac

    # --- slice thickness, scanner blur, noise
    image = grid.collapse(image.astype(np.float32)) + offset
    image = ndimage.gaussian_filter(image, sigma=(0.5, 0.5, 0.0))
    noise = ndimage.gaussian_filter(rng.standard_normal(grid.shape), sigma=(0.7, 0.7, 0.0))
    image = image + rng.uniform(10.0, 20.0) * noise / noise.std()
    image = np.clip(image, HU_MIN, HU_MAX)

    # --- labels from the slice-averaged occupancies
    panc_label = grid.collapse(panc_frac) >= 0.5
    les_label = grid.collapse(les_frac) >= 0.5
    components, n = ndimage.label(les_label, structure=np.ones((3, 3, 3)))
    if n == 0:
        raise RuntimeError("synthetic lesion vanished after sampling")  # pragma: no cover
    if n > 1:  # keep the main body of the lesion only
        sizes = ndimage.sum_labels(les_label, components, index=np.arange(1, n + 1))
        les_label = components == (1 + int(np.argmax(sizes)))
    labels = np.zeros(grid.shape, dtype=np.uint8)
    labels[panc_label] = PANCREAS_LABEL
    labels[les_label] = LESION_LABEL
    return image, labels, spacing
