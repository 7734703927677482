"""Shared fixtures: small quiz data folders written on the fly as real NIfTI files.

* ``quiz_builder``: a :class:`QuizBuilder` rooted at ``tmp_path / "quiz"``; add cases one by one
  (``add_case``, ``add_test``) or a whole valid layout (``standard``), then break what a test needs.
  Tests reach the helpers through the builder (``quiz_builder.write_nifti``, ``.lps_affine``,
  ``.synthetic_image``, ``.synthetic_mask``, ``.truncate``, ``.PANCREAS_FLOAT``) rather than
  importing this file.
* ``quiz_dir``: a valid standard quiz folder (train 2 + validation 1 case per subtype, 2 test images),
  with the real data's quirks: LPS affines, int16/int32/float64 images, float32/float64/uint8 masks
  storing pancreas as 1.0000152587890625, anisotropic spacings.
* ``tree_digest``: ``tree_digest(folder) -> {relative path: sha256}`` to prove a folder is unchanged.
* ``real_sample_dir``: the real sample's ``data`` folder; skips unless ``PANCREAS_MTL_REAL_SAMPLE``
  points at the real-sample folder (the ``data`` folder's parent).
* ``real_sample_quiz_dir``: a full quiz layout symlinked from the real sample (a test construction).
* ``real_ct_dir``: the real-CT cases' ``data`` folder (45 labelled cases, subtype 2 only); skips unless
  ``PANCREAS_MTL_REAL_CT`` points at the real-CT folder (the ``data`` folder's parent).
* ``accelerator_standin``: the predictors' device tensors become tensors that refuse ``.numpy()`` and pickling
  until copied to the host with ``.cpu()``, as on a GPU (``tests/accelerator.py`` says what it models and what
  not). Code that runs on a device (training-time validation, the device export, the benchmark rows) is tested
  through it, so a CUDA-only defect fails a CPU test.
* Tests marked ``gpu`` (``tests/gpu/``) need CUDA: they are reported as skipped, with the reason, where torch sees
  no GPU. Run them on a GPU machine with ``pytest -m gpu``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

#: how the quiz masks store pancreas (1 + 2**-16), exactly representable in float32
PANCREAS_FLOAT = 1.0000152587890625
SMALL_SHAPE = (8, 10, 6)
IMAGE_DTYPES = (np.int16, np.int32, np.float64)
MASK_DTYPES = (np.float32, np.float64, np.uint8)
SPACINGS = ((0.8, 0.8, 2.5), (0.33, 0.33, 0.45), (0.98, 0.98, 8.0), (0.7, 0.7, 3.0))


def lps_affine(spacing=(0.8, 0.8, 2.5), origin=(120.5, 80.25, -400.0)) -> np.ndarray:
    """An LPS-oriented affine like the quiz data's: ``diag(-sx, -sy, sz)`` plus an origin."""
    sx, sy, sz = spacing
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = origin
    return affine


def synthetic_image(shape=SMALL_SHAPE, dtype=np.int16, seed=0) -> np.ndarray:
    """CT-like intensities (-1000..400 HU); float dtypes get fractional values."""
    rng = np.random.default_rng(seed)
    data = rng.uniform(-1000, 400, size=shape)
    if np.issubdtype(np.dtype(dtype), np.integer):
        data = np.rint(data)
    return data.astype(dtype)


def synthetic_mask(shape=SMALL_SHAPE, dtype=np.float32, pancreas_value=PANCREAS_FLOAT, seed=0) -> np.ndarray:
    """A pancreas box with a lesion inside; pancreas stored as ``pancreas_value`` for float dtypes."""
    x, y, z = shape
    mask = np.zeros(shape, dtype=np.float64)
    off = seed % 2
    mask[1 + off : x - 1, 2 : y - 2, 1 : max(2, z - 1)] = 1
    mask[2 + off : 4 + off, 3:5, 2 : max(3, z // 2 + 1)] = 2
    if np.issubdtype(np.dtype(dtype), np.floating):
        mask[mask == 1] = pancreas_value
    return mask.astype(dtype)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, qform_code: int = 1, sform_code: int = 1) -> Path:
    """Write ``data`` as NIfTI-1 with the given affine in both qform and sform (codes as in the quiz data)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=qform_code)
    img.header.set_sform(affine, code=sform_code)
    img.set_data_dtype(data.dtype)
    nib.save(img, str(path))
    return path


@dataclass
class WrittenCase:
    case_id: str
    split: str
    subtype: int | None
    image: Path | None
    mask: Path | None
    image_data: np.ndarray
    mask_data: np.ndarray | None
    affine: np.ndarray


@dataclass
class QuizBuilder:
    """Writes a quiz folder (``root``) case by case. Case numbers are unique unless given explicitly."""

    root: Path
    cases: dict[str, WrittenCase] = field(default_factory=dict)
    _next_number: int = 1

    # helpers reachable from tests through the fixture (tests do not import conftest)
    PANCREAS_FLOAT = PANCREAS_FLOAT
    write_nifti = staticmethod(write_nifti)
    lps_affine = staticmethod(lps_affine)
    synthetic_image = staticmethod(synthetic_image)
    synthetic_mask = staticmethod(synthetic_mask)

    def _number(self, number) -> int:
        if number is None:
            number = self._next_number
        self._next_number = max(self._next_number, int(number) + 1)
        return int(number)

    def add_case(
        self,
        split: str = "train",
        subtype: int = 0,
        number: int | None = None,
        *,
        shape=SMALL_SHAPE,
        image_dtype=None,
        mask_dtype=None,
        spacing=None,
        pancreas_value=PANCREAS_FLOAT,
        image: bool = True,
        mask: bool = True,
        folder_subtype: int | None = None,
        image_data=None,
        mask_data=None,
        mask_shape=None,
        mask_affine=None,
    ) -> WrittenCase:
        """Write ``{split}/subtype{folder_subtype or subtype}/quiz_{subtype}_{NNN}[_0000].nii.gz``."""
        n = self._number(number)
        i = len(self.cases)
        image_dtype = image_dtype or IMAGE_DTYPES[i % len(IMAGE_DTYPES)]
        mask_dtype = mask_dtype or MASK_DTYPES[(i + i // 3) % len(MASK_DTYPES)]
        spacing = spacing or SPACINGS[i % len(SPACINGS)]
        affine = lps_affine(spacing, origin=(100.0 + i, 50.5 - i, -300.0 + 7 * i))
        folder = self.root / split / f"subtype{subtype if folder_subtype is None else folder_subtype}"
        folder.mkdir(parents=True, exist_ok=True)
        case_id = f"quiz_{subtype}_{n:03d}"
        if image_data is None:
            image_data = synthetic_image(shape, image_dtype, seed=n)
        if mask_data is None:
            mask_data = synthetic_mask(mask_shape or shape, mask_dtype, pancreas_value, seed=n)
        image_path = write_nifti(folder / f"{case_id}_0000.nii.gz", image_data, affine) if image else None
        mask_path = (
            write_nifti(folder / f"{case_id}.nii.gz", mask_data, affine if mask_affine is None else mask_affine)
            if mask
            else None
        )
        case = WrittenCase(case_id, split, subtype, image_path, mask_path, image_data, mask_data, affine)
        self.cases[f"{split}/{case_id}"] = case
        return case

    def add_test(
        self,
        number: int | None = None,
        *,
        shape=SMALL_SHAPE,
        image_dtype=None,
        spacing=None,
        image_data=None,
        name: str | None = None,
    ) -> WrittenCase:
        """Write ``test/quiz_{NNN}_0000.nii.gz`` (or ``test/{name}``)."""
        n = self._number(number)
        i = len(self.cases)
        image_dtype = image_dtype or IMAGE_DTYPES[i % len(IMAGE_DTYPES)]
        affine = lps_affine(spacing or SPACINGS[i % len(SPACINGS)], origin=(90.0 - i, 60.0, -250.0 + i))
        case_id = f"quiz_{n:03d}"
        if image_data is None:
            image_data = synthetic_image(shape, image_dtype, seed=n)
        path = write_nifti(self.root / "test" / (name or f"{case_id}_0000.nii.gz"), image_data, affine)
        case = WrittenCase(case_id, "test", None, path, None, image_data, None, affine)
        self.cases[f"test/{case_id}"] = case
        return case

    def standard(self, n_train: int = 2, n_validation: int = 1, n_test: int = 2) -> Path:
        """A valid quiz folder: ``n_train``/``n_validation`` cases per subtype and ``n_test`` test images."""
        for split, n_per in (("train", n_train), ("validation", n_validation)):
            for subtype in (0, 1, 2):
                for _ in range(n_per):
                    self.add_case(split, subtype)
        for _ in range(n_test):
            self.add_test()
        return self.root

    def case(self, case_id: str) -> WrittenCase:
        matches = [c for c in self.cases.values() if c.case_id == case_id]
        assert len(matches) == 1, f"{case_id}: {len(matches)} written cases"
        return matches[0]

    def labelled(self, split: str | None = None) -> list[WrittenCase]:
        return [c for c in self.cases.values() if c.split != "test" and (split is None or c.split == split)]

    @staticmethod
    def truncate(path: Path, fraction: float = 0.5) -> Path:
        """Cut a file to ``fraction`` of its bytes (a download that stopped half way)."""
        raw = Path(path).read_bytes()
        Path(path).write_bytes(raw[: int(len(raw) * fraction)])
        return Path(path)


def digest_tree(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``, plus ``"<dir>/"`` entries for folders."""
    folder = Path(folder)
    out: dict[str, str] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_dir() and not p.is_symlink():
            out[rel + "/"] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def quiz_builder(tmp_path) -> QuizBuilder:
    return QuizBuilder(tmp_path / "quiz")


@pytest.fixture
def quiz_dir(quiz_builder) -> Path:
    return quiz_builder.standard()


@pytest.fixture
def tree_digest():
    return digest_tree


def opt_in_data(variable: str, what: str) -> Path:
    """The ``data`` folder of the folder an opt-in variable names; skip the test where it is unset or lacks one."""
    root = os.environ.get(variable)
    if not root:
        pytest.skip(f"set {variable} to the {what} folder to run this test")
    data = Path(root) / "data"
    if not data.is_dir():
        pytest.skip(f"{variable}={root} has no data/ folder")
    return data


@pytest.fixture
def real_sample_dir() -> Path:
    """The real sample's ``data`` folder; skip unless PANCREAS_MTL_REAL_SAMPLE points at its parent."""
    return opt_in_data("PANCREAS_MTL_REAL_SAMPLE", "real-sample")


@pytest.fixture
def real_ct_dir() -> Path:
    """The real-CT cases' ``data`` folder; skip unless PANCREAS_MTL_REAL_CT points at its parent."""
    return opt_in_data("PANCREAS_MTL_REAL_CT", "real-ct")


@pytest.fixture
def real_sample_quiz_dir(real_sample_dir, tmp_path) -> Path:
    """A complete quiz layout in ``tmp_path`` built from the real sample by symlinks (TEST CONSTRUCTION).

    The real sample has one labelled case (train/subtype0/quiz_0_324) and no validation split, but a
    quiz folder needs train and validation cases in all three subtype folders. So the same real
    image/mask pair is linked in under invented ids: train/subtype0/quiz_0_324 (the real one),
    train/subtype1/quiz_1_901, train/subtype2/quiz_2_902, validation/subtype{0,1,2}/quiz_{S}_99{9,8,7}.
    Their subtype labels mean nothing. The five real test images are linked into test/.
    Nothing is copied; skips like ``real_sample_dir``.
    """
    image = real_sample_dir / "train" / "subtype0" / "quiz_0_324_0000.nii.gz"
    mask = real_sample_dir / "train" / "subtype0" / "quiz_0_324.nii.gz"
    root = tmp_path / "real_quiz"
    ids = {
        ("train", 0): "quiz_0_324",
        ("train", 1): "quiz_1_901",
        ("train", 2): "quiz_2_902",
        ("validation", 0): "quiz_0_999",
        ("validation", 1): "quiz_1_998",
        ("validation", 2): "quiz_2_997",
    }
    for (split, subtype), case_id in ids.items():
        folder = root / split / f"subtype{subtype}"
        folder.mkdir(parents=True)
        (folder / f"{case_id}_0000.nii.gz").symlink_to(image)
        (folder / f"{case_id}.nii.gz").symlink_to(mask)
    (root / "test").mkdir(parents=True)
    for src in sorted((real_sample_dir / "test").glob("quiz_*_0000.nii.gz")):
        (root / "test" / src.name).symlink_to(src)
    return root


@pytest.fixture(scope="session")
def smoke_workflow(tmp_path_factory) -> Path:
    """The whole workflow run once by real Snakemake on the smoke config (.test/config_smoke.yaml).

    Session-scoped: many tests read its outputs (conversion, plans, both training stages, ...).
    ``PANCREAS_MTL_SMOKE_WORKFLOW=<folder>`` reuses a finished run of the same code instead (it takes 15 minutes
    on 2 cores); CI never sets it.
    """
    from tests.workflow_helpers import copy_workflow, run_snakemake, snakemake_output

    reuse = os.environ.get("PANCREAS_MTL_SMOKE_WORKFLOW")
    if reuse:  # a developer's shortcut: a finished smoke run of the same code, e.g. a previous session's
        return Path(reuse)
    workdir = copy_workflow(tmp_path_factory.mktemp("smoke") / "workflow")
    result = run_snakemake(
        workdir, "--cores", "2", "--configfile", ".test/config_smoke.yaml", "--show-failed-logs", timeout=1500
    )
    if result.returncode != 0:
        pytest.fail(f"smoke workflow failed:\n{snakemake_output(result)[-6000:]}")
    return workdir


@pytest.fixture
def accelerator_standin(monkeypatch):
    from tests.accelerator import install

    return install(monkeypatch)


def pytest_collection_modifyitems(config, items):
    gpu_tests = [item for item in items if "gpu" in item.keywords]
    if not gpu_tests:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False); run with pytest -m gpu")
        for item in gpu_tests:
            item.add_marker(skip)
