"""Layout of the pancreas quiz data folder: where the files live and how they are named.

The expected layout (``S`` is the subtype 0, 1 or 2, ``NNN`` a three-digit case number)::

    <quiz>/train/subtype{S}/quiz_{S}_{NNN}_0000.nii.gz       image
    <quiz>/train/subtype{S}/quiz_{S}_{NNN}.nii.gz            mask (0 background, 1 pancreas, 2 lesion)
    <quiz>/validation/subtype{S}/...                         same as train
    <quiz>/test/quiz_{NNN}_0000.nii.gz                       images only

Case ids are the file names without the channel suffix and extension: ``quiz_0_041`` for a
train/validation case, ``quiz_037`` for a test case.

A segmentation set without subtype labels may instead hold its pairs directly in ``train/`` (and
``validation/``), as a plain nnU-Net-style set: ``<quiz>/train/{ID}_0000.nii.gz`` (image) and ``{ID}.nii.gz``
(mask), ``ID`` of letters, digits, ``_`` and ``-``; its cases have no subtype. A split folder holds one layout or
the other: next to subtype folders, files directly in it are strays.

:func:`discover_quiz_cases` only looks at names and folders; it never opens a file. The content of
the files (readable, 3D, matching geometry, mask values) is checked by
:mod:`pancreas_mtl.data.validation`, which also turns the problems found here into one error.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pancreas_mtl.data.labels import SUBTYPES

SPLITS: tuple[str, ...] = ("train", "validation", "test")
LABELLED_SPLITS: tuple[str, ...] = ("train", "validation")
NIFTI_SUFFIX = ".nii.gz"

#: train/validation image, e.g. ``quiz_0_041_0000.nii.gz``
LABELLED_IMAGE_RE = re.compile(r"^quiz_(?P<subtype>\d)_(?P<number>\d{3})_0000\.nii\.gz$")
#: train/validation mask, e.g. ``quiz_0_041.nii.gz``
LABELLED_MASK_RE = re.compile(r"^quiz_(?P<subtype>\d)_(?P<number>\d{3})\.nii\.gz$")
#: test image, e.g. ``quiz_037_0000.nii.gz``
TEST_IMAGE_RE = re.compile(r"^quiz_(?P<number>\d{3})_0000\.nii\.gz$")
#: a mask-like name for a test case (``quiz_037.nii.gz``): not expected anywhere
TEST_MASK_RE = re.compile(r"^quiz_(?P<number>\d{3})\.nii\.gz$")
#: plain layout (no subtype folders): image ``{ID}_0000.nii.gz`` and mask ``{ID}.nii.gz`` directly in the split folder
PLAIN_IMAGE_RE = re.compile(r"^(?P<case>[A-Za-z0-9][A-Za-z0-9_\-]*)_0000\.nii\.gz$")
PLAIN_MASK_RE = re.compile(r"^(?P<case>[A-Za-z0-9][A-Za-z0-9_\-]*)\.nii\.gz$")
#: case ids
LABELLED_CASE_ID_RE = re.compile(r"^quiz_(?P<subtype>\d)_(?P<number>\d{3})$")
TEST_CASE_ID_RE = re.compile(r"^quiz_(?P<number>\d{3})$")

# Folders that macOS / archive tools leave behind; never part of the data.
_IGNORED_DIRS = {"__MACOSX"}


@dataclass(frozen=True)
class QuizCase:
    """One case of the quiz: an image and, for train/validation, its mask."""

    case_id: str  # "quiz_0_041" (train/validation) or "quiz_037" (test)
    split: str  # "train" | "validation" | "test"
    subtype: int | None  # 0, 1, 2; None for test cases and the cases of a plain (subtype-less) layout
    image: Path
    mask: Path | None  # None for test cases

    @property
    def number(self) -> str:
        """The three-digit case number ``NNN``."""
        return self.case_id.rsplit("_", 1)[1]

    @property
    def labelled(self) -> bool:
        return self.mask is not None


def labelled_case_id(subtype: int, number: str | int) -> str:
    """``labelled_case_id(0, 41) == "quiz_0_041"``."""
    return f"quiz_{int(subtype)}_{int(number):03d}"


def test_case_id(number: str | int) -> str:
    """``test_case_id(37) == "quiz_037"``."""
    return f"quiz_{int(number):03d}"


# Not a pytest test despite the name.
test_case_id.__test__ = False  # type: ignore[attr-defined]


def image_file_name(case_id: str) -> str:
    """nnU-Net / quiz image file name of a case: ``{case_id}_0000.nii.gz``."""
    return f"{case_id}_0000{NIFTI_SUFFIX}"


def mask_file_name(case_id: str) -> str:
    """nnU-Net / quiz mask file name of a case: ``{case_id}.nii.gz``."""
    return f"{case_id}{NIFTI_SUFFIX}"


def is_nifti_name(name: str) -> bool:
    """Whether a file name looks like a NIfTI file (``.nii`` or ``.nii.gz``), hidden files excluded.

    Hidden files (``.DS_Store``, macOS ``._quiz_...`` resource forks) are never data.
    """
    if name.startswith("."):
        return False
    lower = name.lower()
    return lower.endswith(".nii") or lower.endswith(".nii.gz")


def relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (posix style) when it lies inside it, else the full path."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _split_order(case: QuizCase) -> tuple:
    return (SPLITS.index(case.split), -1 if case.subtype is None else case.subtype, case.case_id)


def sort_cases(cases: list[QuizCase]) -> list[QuizCase]:
    """Cases in a stable order: train, validation, test; then subtype; then case id."""
    return sorted(cases, key=_split_order)


def _nifti_entries(folder: Path) -> list[Path]:
    """NIfTI-named entries directly inside ``folder`` (sorted); everything else is ignored."""
    return sorted(p for p in folder.iterdir() if is_nifti_name(p.name))


class _Discovery:
    def __init__(self, quiz_dir: Path, allow_partial: bool = False):
        self.root = quiz_dir
        self.allow_partial = allow_partial
        self.cases: list[QuizCase] = []
        self.problems: list[str] = []
        # (namespace, case number) -> {(folder relative to root, case id): file relative to root}.
        # Labelled cases (quiz_S_NNN) and test images (quiz_NNN) are numbered separately: their ids never
        # collide, and a test number equal to a training number is not the same case.
        self.numbers: dict[tuple[str, str], dict[tuple[str, str], str]] = defaultdict(dict)
        self.scanned_dirs: set[Path] = set()
        # split folders of another job's cases: neither scanned nor reported as strays
        self.skipped_trees: set[Path] = set()

    def rel(self, path: Path) -> str:
        return relative_name(path, self.root)

    def problem(self, path: Path, message: str) -> None:
        self.problems.append(f"{self.rel(path)}: {message}")

    def note_number(
        self, path: Path, number: str, case_id: str, is_image: bool = True, namespace: str | None = None
    ) -> None:
        """Remember which case uses a number (a plain layout's case: its id), named by its image file (or its mask
        when alone)."""
        key = (self.rel(path.parent), case_id)
        numbered = (namespace or ("test" if case_id.count("_") == 1 else "labelled"), number)
        if is_image or key not in self.numbers[numbered]:
            self.numbers[numbered][key] = self.rel(path)

    # -- train / validation -------------------------------------------------------------------
    def scan_labelled_split(self, split: str) -> None:
        split_dir = self.root / split
        if self.allow_partial and not split_dir.is_dir():
            return
        if not split_dir.is_dir():
            self.problem(
                split_dir,
                f"the {split}/ folder is missing (expected {split}/subtype0/, {split}/subtype1/ and {split}/subtype2/)",
            )
            return
        subtype_dirs = {s: split_dir / f"subtype{s}" for s in SUBTYPES}
        if not any(d.is_dir() for d in subtype_dirs.values()):
            if _nifti_entries(split_dir):
                self.scan_plain_folder(split, split_dir)
                return
            self.problem(
                split_dir,
                f"no cases: the {split}/ folder has none of the subtype0/, subtype1/, subtype2/ folders and no "
                "image and mask pairs ({ID}_0000.nii.gz, {ID}.nii.gz)",
            )
            return
        n_before = len(self.cases)
        for subtype, folder in subtype_dirs.items():
            if not folder.is_dir():
                if not self.allow_partial:
                    self.problem(folder, "the subtype folder is missing")
                continue
            self.scan_subtype_folder(split, subtype, folder)
        if len(self.cases) == n_before and not self._has_problem_under(split_dir):
            self.problem(split_dir, f"no cases found in the {split} split")

    def _has_problem_under(self, folder: Path) -> bool:
        prefix = self.rel(folder)
        return any(p.startswith((prefix + "/", prefix + ":")) for p in self.problems)

    def scan_subtype_folder(self, split: str, subtype: int, folder: Path) -> None:
        self.scanned_dirs.add(folder)
        entries = _nifti_entries(folder)
        if not entries:
            self.problem(folder, "the subtype folder is empty (no .nii.gz images or masks)")
            return
        images: dict[str, Path] = {}
        masks: dict[str, Path] = {}
        expected = f"quiz_{subtype}_NNN_0000.nii.gz (image) or quiz_{subtype}_NNN.nii.gz (mask)"
        for path in entries:
            name = path.name
            if not path.is_file():
                self.problem(path, "is not a readable file (a folder or a broken link?)")
                continue
            m_img = LABELLED_IMAGE_RE.match(name)
            m_mask = None if m_img else LABELLED_MASK_RE.match(name)
            m = m_img or m_mask
            if m is None:
                if TEST_IMAGE_RE.match(name):
                    self.problem(
                        path,
                        f"test-style name (quiz_NNN_0000.nii.gz) in {split}/subtype{subtype}/; "
                        f"expected {expected}; test images belong in test/",
                    )
                elif name.lower().endswith(".nii"):
                    self.problem(path, f"uncompressed .nii files are not supported; expected {expected}")
                else:
                    self.problem(path, f"file name does not match the quiz pattern; expected {expected}")
                continue
            name_subtype = int(m["subtype"])
            case_id = labelled_case_id(name_subtype, m["number"])
            self.note_number(path, m["number"], case_id, is_image=bool(m_img))
            if name_subtype != subtype:
                self.problem(
                    path,
                    f"the name says subtype {name_subtype} (quiz_{name_subtype}_...) but the file "
                    f"is in the subtype{subtype}/ folder",
                )
                continue
            (images if m_img else masks)[case_id] = path
        self.add_pairs(split, subtype, images, masks)

    def add_pairs(self, split: str, subtype: int | None, images: dict[str, Path], masks: dict[str, Path]) -> None:
        """The cases of a folder's images and masks by case id; an image or a mask alone is a problem."""
        for case_id in sorted(set(images) | set(masks)):
            image, mask = images.get(case_id), masks.get(case_id)
            if mask is None:
                self.problem(image, f"image without mask: {mask_file_name(case_id)} is missing next to it")
            elif image is None:
                self.problem(mask, f"mask without image: {image_file_name(case_id)} is missing next to it")
            else:
                self.cases.append(QuizCase(case_id, split, subtype, image, mask))

    def scan_plain_folder(self, split: str, folder: Path) -> None:
        """Image and mask pairs directly in a split folder, without subtype folders: cases without a subtype."""
        self.scanned_dirs.add(folder)
        images: dict[str, Path] = {}
        masks: dict[str, Path] = {}
        expected = "{ID}_0000.nii.gz (image) and {ID}.nii.gz (mask), ID of letters, digits, _ and -"
        for path in _nifti_entries(folder):
            if not path.is_file():
                self.problem(path, "is not a readable file (a folder or a broken link?)")
                continue
            m_img = PLAIN_IMAGE_RE.match(path.name)
            m = m_img or PLAIN_MASK_RE.match(path.name)
            if m is None:
                uncompressed = path.name.lower().endswith(".nii")
                reason = "uncompressed .nii files are not supported" if uncompressed else "file name does not match"
                self.problem(path, f"{reason}; expected {expected}")
                continue
            # ids share one namespace across splits: the same id in train/ and validation/ is an error
            self.note_number(path, m["case"], m["case"], is_image=bool(m_img), namespace="plain")
            (images if m_img else masks)[m["case"]] = path
        self.add_pairs(split, None, images, masks)

    # -- test -----------------------------------------------------------------------------------
    def scan_test(self) -> None:
        folder = self.root / "test"
        if not folder.is_dir():
            self.problem(folder, "the test/ folder is missing (expected test/quiz_NNN_0000.nii.gz images)")
            return
        self.scanned_dirs.add(folder)
        entries = _nifti_entries(folder)
        if not entries:
            self.problem(folder, "the test/ folder is empty (no quiz_NNN_0000.nii.gz images)")
            return
        for path in entries:
            name = path.name
            if not path.is_file():
                self.problem(path, "is not a readable file (a folder or a broken link?)")
                continue
            m = TEST_IMAGE_RE.match(name)
            if m:
                case_id = test_case_id(m["number"])
                self.note_number(path, m["number"], case_id)
                self.cases.append(QuizCase(case_id, "test", None, path, None))
                continue
            m_lab = LABELLED_IMAGE_RE.match(name) or LABELLED_MASK_RE.match(name)
            if m_lab:
                self.note_number(
                    path,
                    m_lab["number"],
                    labelled_case_id(m_lab["subtype"], m_lab["number"]),
                    is_image=name.endswith("_0000.nii.gz"),
                )
                self.problem(
                    path,
                    "train/validation-style name (quiz_S_NNN...) in test/; test images are named "
                    "quiz_NNN_0000.nii.gz and labelled cases belong in train/ or validation/",
                )
            elif TEST_MASK_RE.match(name):
                self.problem(path, "test/ holds images only (quiz_NNN_0000.nii.gz); this looks like a mask")
            elif name.lower().endswith(".nii"):
                self.problem(path, "uncompressed .nii files are not supported; expected quiz_NNN_0000.nii.gz")
            else:
                self.problem(path, "file name does not match the quiz pattern quiz_NNN_0000.nii.gz")

    # -- everything else --------------------------------------------------------------------------
    def scan_strays(self) -> None:
        """NIfTI files anywhere outside the expected folders are reported (stray non-NIfTI files are not)."""
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            here = Path(dirpath)
            dirnames[:] = sorted(
                d
                for d in dirnames
                if not d.startswith(".") and d not in _IGNORED_DIRS and here / d not in self.skipped_trees
            )
            if here in self.scanned_dirs:
                continue
            for name in sorted(filenames):
                if is_nifti_name(name):
                    self.problem(
                        here / name,
                        "NIfTI file outside the expected layout (train/subtypeS/, "
                        "validation/subtypeS/ with S in 0-2, or test/)",
                    )

    def check_duplicates(self) -> None:
        for namespace, number in sorted(self.numbers):
            owners = self.numbers[(namespace, number)]
            if len(owners) > 1:
                files = ", ".join(owners[k] for k in sorted(owners))
                if namespace == "plain":
                    self.problems.append(
                        f"{files}: case id {number} is used by {len(owners)} cases (unique across splits)"
                    )
                    continue
                where = "among the test images" if namespace == "test" else "across splits and subtypes"
                self.problems.append(
                    f"{files}: case number {number} is used by {len(owners)} different cases "
                    f"(case numbers must be unique {where})"
                )


def discover_quiz_cases(
    quiz_dir: str | Path, allow_partial: bool = False, splits: tuple[str, ...] = SPLITS
) -> tuple[list[QuizCase], list[str]]:
    """Find the cases of a quiz folder by name and folder only (no file is opened).

    Returns ``(cases, problems)``: the well-formed image/mask pairs (and test images), sorted by
    split, subtype and case id, and one message per layout problem, each starting with the file or
    folder it concerns (relative to ``quiz_dir``). Hidden files and non-NIfTI files are ignored.
    When ``problems`` is not empty the cases must not be used for anything but further checks.
    ``allow_partial`` accepts a folder with only some of the split/subtype folders (e.g. a sample of the
    data for planning and benchmarks); every other check still applies.
    ``splits`` limits the search to those split folders (the labelled cases and the test images are converted
    by separate jobs); NIfTI files outside every split folder are reported either way.
    """
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown quiz split(s) {unknown}; splits: {', '.join(SPLITS)}")
    root = Path(quiz_dir)
    if not root.exists():
        return [], [f"{root}: the quiz data folder does not exist"]
    if not root.is_dir():
        return [], [f"{root}: the quiz data path is not a folder"]
    d = _Discovery(root, allow_partial)
    for split in LABELLED_SPLITS:
        if split in splits:
            d.scan_labelled_split(split)
    if "test" in splits:
        d.scan_test()
    d.skipped_trees = {root / split for split in SPLITS if split not in splits}
    d.scan_strays()
    d.check_duplicates()
    return sort_cases(d.cases), d.problems
