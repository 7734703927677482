"""Conversion of the quiz data folder to an nnU-Net v2 raw dataset, and of its test images.

:func:`convert_quiz_to_nnunet` converts the labelled cases (train/ and validation/) and writes::

    <raw_dataset_dir>/dataset.json
    <raw_dataset_dir>/imagesTr/{case_id}_0000.nii.gz   train AND validation images (byte-for-byte copies)
    <raw_dataset_dir>/labelsTr/{case_id}.nii.gz        their masks, uint8 {0,1,2} on the image's grid
    <splits_json>                                      nnU-Net splits_final.json: fold 0 = official split
    <case_table_csv>                                   case_id,split,subtype,image,mask

:func:`convert_test_images` converts the test images (test/) on their own, so that a new test image changes
nothing that training reads::

    <images_dir>/{case_id}_0000.nii.gz                 test images (byte-for-byte copies)
    <test_table_csv>                                   the same columns; image relative to <images_dir>

Images are byte-for-byte copies; the one exception is an image stored as (x, y, z, 1), which the
validator accepts as 3D: it is copied with only the header's dim field rewritten to (x, y, z).
Labels are the masks rounded to uint8 and written with a copy of the image's header (same shape,
affine, qform/sform and codes), so nnU-Net, nibabel and SimpleITK see identical grids.

Every real labelled case holds both pancreas (1) and lesion (2), and the lesion-presence prior
downstream relies on it. A labelled mask that lacks either label is still converted unchanged, but
each one is logged as a WARNING naming the mask file and the missing label, and the count is logged
again at the end of the conversion (the check runs in the worker that reads the mask; the worker
returns what it found and the parent process logs it, so it also reaches the log with a process pool).

Validation cases go to imagesTr with the training cases (nnU-Net plans and preprocesses them once), but the
workflow's splits never put them in a fold (:func:`make_splits`): they are only predicted for the final
metrics. The quiz folder's part that is converted is
validated completely first (:func:`~pancreas_mtl.data.validation.validate_quiz_folder`); nothing is
written when it has any problem. The dataset (or the test images' folder) is built in a temporary sibling
folder and renamed into place at the end, so an interrupted run never leaves half of one behind.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from pancreas_mtl.data.case_table import write_case_table
from pancreas_mtl.data.folder_check import selection_size
from pancreas_mtl.data.labels import (
    LABEL_MODES,
    LABELS,
    LESION_LABEL,
    PANCREAS_LABEL,
    REGION_LABELS,
    REGIONS_CLASS_ORDER,
    SUBTYPES,
)
from pancreas_mtl.data.quiz_layout import (
    LABELLED_SPLITS,
    TEST_IMAGE_RE,
    QuizCase,
    image_file_name,
    mask_file_name,
)
from pancreas_mtl.data.validation import map_cases, spatial_shape, validate_quiz_folder
from pancreas_mtl.errors import UserInputError

log = logging.getLogger(__name__)

DEFAULT_DATASET_NAME = "Dataset501_PancreasQuiz"
DATASET_NAME_RE = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_\-]+$")
SPLIT_SCHEMES = ("official", "kfold")
# What a raw dataset written by this module contains (imagesTs: by an earlier version, which converted the test
# images into it); anything else in an existing output folder means it is not ours, and it is not replaced.
_DATASET_ENTRIES = {"dataset.json", "imagesTr", "labelsTr", "imagesTs"}


def dataset_json(cases: list[QuizCase], dataset_name: str = DEFAULT_DATASET_NAME, labels: str = "softmax") -> dict:
    """nnU-Net v2 ``dataset.json`` for the converted quiz cases. ``labels`` ``"regions"`` declares nnU-Net's
    overlapping regions (whole pancreas, lesion) and their ``regions_class_order``, which switch nnU-Net's trainer to
    sigmoid outputs and its region loss; the masks are the same either way."""
    if labels not in LABEL_MODES:
        raise UserInputError(f"training.labels must be one of {', '.join(LABEL_MODES)}, got {labels!r}")
    n_training = sum(1 for c in cases if c.split in LABELLED_SPLITS)
    regions = {"labels": dict(REGION_LABELS), "regions_class_order": list(REGIONS_CLASS_ORDER)}
    return {
        "name": dataset_name,
        "description": "Pancreas quiz: 3D CT, pancreas (1) and lesion (2) segmentation; lesion subtype "
        "0/1/2 per case in the case table. Train and validation cases are both in "
        "imagesTr; splits_final.json never puts a validation case in a fold. The test images "
        "are converted apart from this dataset.",
        "reference": "Pancreas quiz data (crops of PANORAMA, panorama.grand-challenge.org)",
        "licence": "CC BY-NC 4.0",
        "channel_names": {"0": "CT"},
        "labels": dict(LABELS),
        "numTraining": n_training,
        "file_ending": ".nii.gz",
        **(regions if labels == "regions" else {}),
    }


def make_splits(
    cases: list[QuizCase],
    scheme: str = "official",
    k: int = 5,
    seed: int | None = None,
    selection_fraction: float | None = None,
) -> list[dict[str, list[str]]]:
    """nnU-Net ``splits_final.json`` content for the labelled cases.

    ``"official"``: one fold. With ``selection_fraction`` (the workflow always passes one), a seeded,
    subtype-stratified share of the training cases (:func:`selection_cases`) is fold 0's ``val``: they select
    the checkpoints and are not trained on; ``train`` is the other training cases. Without it, ``val`` is the
    official validation cases (nnU-Net's usual set-up, which selects checkpoints on the reported cases). When no
    subtype has two training cases to hold one out, fold 0 trains and validates on all of them (as nnU-Net's fold
    "all"), and the workflow uses the last epoch's checkpoint.
    ``"kfold"``: ``k`` folds over the training cases only, stratified by subtype and seeded; each fold
    validates (selects) on its held-out training cases. Either way the official validation cases of the
    workflow stay out of every fold: they are kept for the final metrics. Test cases are never in a split.
    """
    train = sorted((c for c in cases if c.split == "train"), key=lambda c: c.case_id)
    if scheme == "official":
        if selection_fraction is None:
            return [
                {
                    "train": [c.case_id for c in train],
                    "val": sorted(c.case_id for c in cases if c.split == "validation"),
                }
            ]
        if seed is None:
            raise ValueError("held-out selection cases need a seed (the config's training.split_seed)")
        selected = selection_cases(train, selection_fraction, seed)
        if not selected:  # as nnU-Net's fold "all": nnU-Net needs validation cases; the workflow uses the last epoch
            everything = [c.case_id for c in train]
            return [{"train": everything, "val": everything}]
        return [{"train": [c.case_id for c in train if c.case_id not in selected], "val": sorted(selected)}]
    if scheme == "kfold":
        if k < 2 or k > len(train):
            raise UserInputError(f"k-fold cross-validation needs 2 <= k <= {len(train)} training cases (k={k})")
        if seed is None:
            raise ValueError("k-fold splits need a seed (the config's training.split_seed)")
        rng = np.random.default_rng(seed)
        fold_of: dict[str, int] = {}
        offset = 0
        for subtype in sorted({c.subtype for c in train}, key=_subtype_order):
            ids = [c.case_id for c in train if c.subtype == subtype]
            for position, index in enumerate(rng.permutation(len(ids))):
                fold_of[ids[index]] = (position + offset) % k
            offset += len(ids)
        return [
            {
                "train": sorted(c for c, f in fold_of.items() if f != fold),
                "val": sorted(c for c, f in fold_of.items() if f == fold),
            }
            for fold in range(k)
        ]
    raise UserInputError(f"unknown split scheme {scheme!r}; known schemes: {', '.join(SPLIT_SCHEMES)}")


def _subtype_order(subtype: int | None) -> int:
    """Subtypes in order; None (a plain layout's cases) first."""
    return -1 if subtype is None else subtype


def selection_cases(train: list[QuizCase], fraction: float, seed: int) -> set[str]:
    """A seeded ``fraction`` of each subtype's training cases, rounded, at least one of a subtype with two or
    more cases (a subtype with a single case keeps it for training); none with ``fraction`` 0."""
    if not 0 <= fraction <= 0.5:
        raise UserInputError(f"selection_fraction must be in [0, 0.5], got {fraction}")
    if fraction == 0:
        log.info("selection_fraction 0: no training case selects the checkpoints; the last epoch's checkpoint is used")
        return set()
    rng = np.random.default_rng(seed)
    selected: set[str] = set()
    for subtype in sorted({c.subtype for c in train}, key=_subtype_order):
        ids = sorted(c.case_id for c in train if c.subtype == subtype)
        selected.update(ids[i] for i in rng.permutation(len(ids))[: selection_size(len(ids), fraction)])
    if not selected and train:
        log.warning(
            "no training subtype has two cases: none is held out to select the checkpoints; fold 0 trains "
            "and validates on all training cases, and the last epoch's checkpoint is the one used"
        )
    return selected


def read_selection_cases(splits_json: str | Path, folds: list[int]) -> dict[str, list[str]]:
    """The cases that select each fold's checkpoints (its ``val`` list), by fold number as text."""
    splits = json.loads(Path(splits_json).read_text())
    missing = [f for f in folds if f >= len(splits)]
    if missing:
        raise UserInputError(f"{splits_json}: no fold(s) {missing} (it has {len(splits)})")
    return {str(f): list(splits[f]["val"]) for f in folds}


def case_table_rows(cases: list[QuizCase]) -> list[dict[str, str]]:
    """Rows of the case table (:mod:`pancreas_mtl.data.case_table`) of the labelled cases; image/mask paths are
    relative to the raw dataset folder."""
    return [
        {
            "case_id": c.case_id,
            "split": c.split,
            "subtype": "" if c.subtype is None else str(c.subtype),  # none in a plain (subtype-less) layout
            "image": f"imagesTr/{image_file_name(c.case_id)}",
            "mask": f"labelsTr/{mask_file_name(c.case_id)}",
        }
        for c in cases
    ]


def test_table_rows(cases: list[QuizCase]) -> list[dict[str, str]]:
    """Rows of the test images' table: the case table's columns, the image relative to the test images' folder."""
    return [
        {"case_id": c.case_id, "split": "test", "subtype": "", "image": image_file_name(c.case_id), "mask": ""}
        for c in cases
    ]


# Not a pytest test despite the name.
test_table_rows.__test__ = False  # type: ignore[attr-defined]


# -- per case ---------------------------------------------------------------------------------------


def _copy_squeezed(src: Path, dst: Path, img) -> None:
    """Copy a (x, y, z, 1...) NIfTI file as (x, y, z): only the header's dim field changes.

    The voxel bytes of a trailing-singleton 4D volume are laid out exactly as the 3D volume's, so the
    data (dtype, scaling, values) and every other header field are kept byte for byte.
    """
    header_class = type(img.header)
    size = header_class.template_dtype.itemsize  # 348 (NIfTI-1) or 540 (NIfTI-2) bytes
    with _open_nifti(src) as fin, gzip.open(dst, "wb") as fout:
        # the header as stored (a loaded image's .header has its scaling moved to the data proxy)
        hdr = header_class(binaryblock=fin.read(size), endianness=img.header.endianness, check=False)
        hdr.set_data_shape(spatial_shape(img.shape))
        fout.write(hdr.binaryblock)
        shutil.copyfileobj(fin, fout, 1 << 22)


def label_image(mask_data: np.ndarray, image) -> nib.Nifti1Image:
    """A uint8 label image with the mask's rounded values on ``image``'s grid.

    The header is a copy of the image header (shape, pixdim, qform/sform and their codes, units),
    with dtype uint8, no scaling (scl_slope/scl_inter NaN), no intent, no display range and no
    extensions.
    """
    labels = np.rint(np.asarray(mask_data, dtype=np.float64)).astype(np.uint8)
    hdr = image.header.copy()
    hdr.set_data_dtype(np.uint8)
    hdr.set_slope_inter(None, None)
    hdr.set_intent("none")
    hdr["cal_min"] = 0
    hdr["cal_max"] = 0
    hdr["descrip"] = b"pancreas_mtl label 0 bg 1 pancreas 2 lesion"
    del hdr.extensions[:]
    out = type(image)(labels.reshape(spatial_shape(image.shape)), image.affine, hdr)
    out.set_data_dtype(np.uint8)
    return out


#: What :func:`_convert_case` reports for a labelled mask lacking a label: ``(label, description)``.
_EXPECTED_LABELS = ((LESION_LABEL, "no lesion (label 2)"), (PANCREAS_LABEL, "no pancreas (label 1)"))


@dataclass(frozen=True)
class _Converted:
    """What converting one case found: its id, and for a labelled case the expected labels it lacks."""

    case_id: str
    mask: Path | None = None
    missing: tuple[str, ...] = ()


def _missing_labels(labels: np.ndarray) -> tuple[str, ...]:
    """Descriptions of the expected labels (lesion, pancreas) absent from a rounded label array."""
    return tuple(text for value, text in _EXPECTED_LABELS if not np.any(labels == value))


def _open_nifti(path: Path):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def copy_nifti_as_3d(src: str | Path, dst: str | Path):
    """Copy a NIfTI image (``.nii`` or ``.nii.gz``) to the ``.nii.gz`` file ``dst``, squeezed to 3D where stored as
    (x, y, z, 1); return it loaded. The voxels and header are kept byte for byte (a ``.nii`` is only compressed)."""
    src, dst = Path(src), Path(dst)
    image = nib.load(str(src))
    if len(image.shape) != 3:
        _copy_squeezed(src, dst, image)
        return nib.load(str(dst))
    if str(src).endswith(".gz"):
        shutil.copyfile(src, dst)  # byte-for-byte: dtype, header and geometry unchanged
    else:
        with open(src, "rb") as fin, gzip.open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 22)
    return image


def _copy_image(case: QuizCase, images_dir: Path):
    """Copy a case's image into ``images_dir`` (squeezed to 3D where stored as (x, y, z, 1)); return it loaded."""
    return copy_nifti_as_3d(case.image, images_dir / image_file_name(case.case_id))


def _convert_case(case: QuizCase, out_dir: Path) -> _Converted:
    """Write one labelled case into the (temporary) raw dataset folder; return its id and what its mask lacks.

    Runs in a worker process when the conversion is parallel, so it logs nothing itself: the parent
    logs the findings (:func:`_log_missing_labels`).
    """
    image = _copy_image(case, out_dir / "imagesTr")
    mask = nib.load(str(case.mask))
    mask_data = np.asanyarray(mask.dataobj).reshape(spatial_shape(mask.shape))
    label = label_image(mask_data, image)
    nib.save(label, str(out_dir / "labelsTr" / mask_file_name(case.case_id)))
    return _Converted(case.case_id, Path(case.mask), _missing_labels(np.asanyarray(label.dataobj)))


def _convert_test_image(case: QuizCase, images_dir: Path) -> _Converted:
    _copy_image(case, images_dir)
    return _Converted(case.case_id)


def _log_missing_labels(found: list[_Converted]) -> None:
    """Warn once more, with the count, about the labelled masks that lack the lesion or the pancreas."""
    for _, text in _EXPECTED_LABELS:
        masks = [str(c.mask) for c in found if text in c.missing]
        if masks:
            what = text.replace("no ", "", 1)
            log.warning("%d labelled mask(s) lack a %s: %s", len(masks), what, ", ".join(masks))


# -- output handling --------------------------------------------------------------------------------


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_outputs(
    quiz_dir: Path,
    raw_dir: Path,
    files: list[Path],
    ours=lambda name: name in _DATASET_ENTRIES,
    what: str = "the raw dataset folder",
) -> None:
    """Refuse outputs that would write into the quiz folder or replace a folder that is not ours (one holding an
    entry whose name ``ours`` does not accept)."""
    problems = []
    quiz = quiz_dir.resolve()
    raw = raw_dir.resolve()
    if _inside(raw, quiz) or _inside(quiz, raw):
        problems.append(f"{raw_dir}: {what} overlaps the quiz folder {quiz_dir}; the quiz folder is only read")
    for f in files:
        if _inside(f.resolve(), quiz):
            problems.append(f"{f}: output file lies inside the quiz folder {quiz_dir}; the quiz folder is only read")
        if f.exists() and f.is_dir():
            problems.append(f"{f}: output file path is an existing folder")
    if raw_dir.exists():
        if not raw_dir.is_dir():
            problems.append(f"{raw_dir}: exists and is not a folder; not replacing it")
        else:
            outputs = {f.name for f in files if f.resolve().parent == raw}
            foreign = sorted(p.name for p in raw_dir.iterdir() if not ours(p.name) and p.name not in outputs)
            if foreign:
                problems.append(
                    f"{raw_dir}: exists and holds files that a conversion does not write "
                    f"({', '.join(foreign[:5])}); not replacing it - remove it or choose another "
                    "output folder"
                )
    if len(set(p.resolve() for p in files)) != len(files):
        problems.append(f"{files[0]}: the splits file and the case table must be different files")
    if problems:
        raise UserInputError(f"Cannot write {what}", problems)


def _replace_dir(new: Path, dest: Path) -> None:
    """Move the finished folder ``new`` to ``dest``, replacing a previous conversion there."""
    if not dest.exists():
        os.rename(new, dest)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.rename(dest, trash / dest.name)
    os.rename(new, dest)
    shutil.rmtree(trash, ignore_errors=True)


def _partial_file(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    os.close(fd)
    return Path(name)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _summary(cases: list[QuizCase]) -> dict:
    counts = Counter(c.split for c in cases)
    subtypes = {
        split: {str(s): sum(1 for c in cases if c.split == split and c.subtype == s) for s in SUBTYPES}
        for split in LABELLED_SPLITS
    }
    return {
        "cases": {split: counts.get(split, 0) for split in LABELLED_SPLITS},
        "subtypes": subtypes,
    }


def convert_quiz_to_nnunet(
    quiz_dir: str | Path,
    raw_dataset_dir: str | Path,
    splits_json: str | Path,
    case_table_csv: str | Path,
    dataset_name: str = DEFAULT_DATASET_NAME,
    n_workers: int = 1,
    allow_partial: bool = False,
    split_scheme: str = "official",
    k: int = 5,
    split_seed: int | None = None,
    selection_fraction: float | None = None,
    labels: str = "softmax",
) -> dict:
    """Validate the labelled cases of the quiz folder (train/, validation/) and convert them to an nnU-Net v2 raw
    dataset (see the module docstring).

    Raises :class:`~pancreas_mtl.errors.QuizDataError` listing every problem of the quiz folder, or
    :class:`~pancreas_mtl.errors.UserInputError` for unusable output paths; in both cases nothing is
    written. A previous conversion at ``raw_dataset_dir`` is replaced; any other existing folder is not.
    ``allow_partial`` converts a quiz folder that has only some split/subtype folders (the real-scale
    benchmark plans from such a sample). ``split_scheme``, ``k``, ``split_seed`` and ``selection_fraction`` go
    to :func:`make_splits`; ``labels`` (``training.labels``) to :func:`dataset_json`.

    Returns a summary: ``{"dataset_name", "raw_dataset_dir", "cases": {"train": n, "validation": n},
    "subtypes": {split: {"0": n, "1": n, "2": n}}, "seconds"}``.
    """
    t0 = time.perf_counter()
    quiz_dir, raw_dir = Path(quiz_dir), Path(raw_dataset_dir)
    splits_json, case_table_csv = Path(splits_json), Path(case_table_csv)
    if not DATASET_NAME_RE.match(dataset_name):
        raise UserInputError(
            f"dataset name {dataset_name!r} is not an nnU-Net dataset name (DatasetXXX_Name, XXX three digits)"
        )
    if raw_dir.name != dataset_name:
        log.warning(
            "raw dataset folder %s is not named after the dataset %s; nnU-Net's name-based commands will not find it",
            raw_dir,
            dataset_name,
        )

    if labels not in LABEL_MODES:
        raise UserInputError(f"training.labels must be one of {', '.join(LABEL_MODES)}, got {labels!r}")
    if split_scheme not in SPLIT_SCHEMES:
        raise UserInputError(f"unknown split scheme {split_scheme!r}; known schemes: {', '.join(SPLIT_SCHEMES)}")
    cases = validate_quiz_folder(quiz_dir, n_workers=n_workers, allow_partial=allow_partial, splits=LABELLED_SPLITS)
    _check_outputs(quiz_dir, raw_dir, [splits_json, case_table_csv])

    for parent in {raw_dir.parent, splits_json.parent, case_table_csv.parent}:
        parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{raw_dir.name}.partial-", dir=raw_dir.parent))
    tmp_files: list[Path] = []
    try:
        for sub in ("imagesTr", "labelsTr"):
            (tmp_dir / sub).mkdir()
        n = len(cases)
        log.info("converting %d case(s) from %s into %s with %d worker(s)", n, quiz_dir, raw_dir, max(1, n_workers))
        step = max(1, n // 10)
        lacking: list[_Converted] = []
        for i, done in enumerate(map_cases(_convert_case, cases, n_workers, tmp_dir), start=1):
            if done.missing:
                lacking.append(done)
                log.warning(
                    "%s: labelled mask has %s; converted unchanged, but every real labelled case "
                    "holds both pancreas and lesion",
                    done.mask,
                    " and ".join(done.missing),
                )
            if i % step == 0 or i == n:
                log.info("converted %d/%d case(s) (last: %s)", i, n, done.case_id)
        _log_missing_labels(lacking)
        _write_json(tmp_dir / "dataset.json", dataset_json(cases, dataset_name, labels))

        splits_tmp, table_tmp = _partial_file(splits_json), _partial_file(case_table_csv)
        tmp_files += [splits_tmp, table_tmp]
        _write_json(splits_tmp, make_splits(cases, split_scheme, k, split_seed, selection_fraction))
        write_case_table(table_tmp, case_table_rows(cases))

        _replace_dir(tmp_dir, raw_dir)
        os.replace(splits_tmp, splits_json)
        os.replace(table_tmp, case_table_csv)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        for f in tmp_files:
            f.unlink(missing_ok=True)
        raise

    summary = {
        "dataset_name": dataset_name,
        "raw_dataset_dir": str(raw_dir),
        **_summary(cases),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    log.info("wrote %s: %s", raw_dir, json.dumps(summary))
    return summary


def convert_test_images(
    quiz_dir: str | Path,
    images_dir: str | Path,
    test_table_csv: str | Path,
    n_workers: int = 1,
) -> dict:
    """Validate the test images of the quiz folder (test/) and copy them into ``images_dir``, with their table.

    Nothing is written when a test image has a problem; a previous conversion at ``images_dir`` is replaced, any
    other existing folder (one holding a file that is not a test image) is not. Returns ``{"images_dir",
    "cases": {"test": n}, "seconds"}``.
    """
    t0 = time.perf_counter()
    quiz_dir, images_dir, test_table_csv = Path(quiz_dir), Path(images_dir), Path(test_table_csv)
    cases = validate_quiz_folder(quiz_dir, n_workers=n_workers, splits=("test",))
    _check_outputs(
        quiz_dir,
        images_dir,
        [test_table_csv],
        ours=lambda name: bool(TEST_IMAGE_RE.match(name)),
        what="the test images' folder",
    )
    for parent in {images_dir.parent, test_table_csv.parent}:
        parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{images_dir.name}.partial-", dir=images_dir.parent))
    table_tmp = None
    try:
        log.info("copying %d test image(s) from %s into %s", len(cases), quiz_dir / "test", images_dir)
        for _ in map_cases(_convert_test_image, cases, n_workers, tmp_dir):
            pass
        table_tmp = _partial_file(test_table_csv)
        write_case_table(table_tmp, test_table_rows(cases))
        _replace_dir(tmp_dir, images_dir)
        os.replace(table_tmp, test_table_csv)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if table_tmp is not None:
            table_tmp.unlink(missing_ok=True)
        raise
    summary = {
        "images_dir": str(images_dir),
        "cases": {"test": len(cases)},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    log.info("wrote %s: %s", images_dir, json.dumps(summary))
    return summary
