"""Discovery of the quiz folder layout and case naming (names and folders only; no file is opened)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pancreas_mtl.data.quiz_layout import (
    LABELLED_IMAGE_RE,
    LABELLED_MASK_RE,
    TEST_IMAGE_RE,
    QuizCase,
    discover_quiz_cases,
    image_file_name,
    labelled_case_id,
    mask_file_name,
    test_case_id,
)


@pytest.mark.parametrize(
    "name, image, mask, test",
    [
        ("quiz_0_041_0000.nii.gz", True, False, False),
        ("quiz_2_324.nii.gz", False, True, False),
        ("quiz_037_0000.nii.gz", False, False, True),
        ("quiz_037.nii.gz", False, False, False),
        ("quiz_0_041_0001.nii.gz", False, False, False),
        ("quiz_0_41_0000.nii.gz", False, False, False),
        ("quiz_0_041_0000.nii", False, False, False),
        ("Quiz_0_041_0000.nii.gz", False, False, False),
    ],
)
def test_name_patterns(name, image, mask, test):
    assert bool(LABELLED_IMAGE_RE.match(name)) is image
    assert bool(LABELLED_MASK_RE.match(name)) is mask
    assert bool(TEST_IMAGE_RE.match(name)) is test


def test_case_id_helpers():
    assert labelled_case_id(0, 41) == "quiz_0_041"
    assert labelled_case_id("2", "324") == "quiz_2_324"
    assert test_case_id(37) == "quiz_037"
    assert image_file_name("quiz_0_041") == "quiz_0_041_0000.nii.gz"
    assert mask_file_name("quiz_0_041") == "quiz_0_041.nii.gz"


def test_discovers_standard_layout(quiz_builder):
    root = quiz_builder.standard(n_train=2, n_validation=1, n_test=2)
    cases, problems = discover_quiz_cases(root)
    assert problems == []
    assert [c.split for c in cases] == ["train"] * 6 + ["validation"] * 3 + ["test"] * 2
    assert [c.subtype for c in cases] == [0, 0, 1, 1, 2, 2, 0, 1, 2, None, None]
    by_id = {c.case_id: c for c in cases}
    assert len(by_id) == len(cases)
    for written in quiz_builder.cases.values():
        case = by_id[written.case_id]
        assert case == QuizCase(written.case_id, written.split, written.subtype, written.image, written.mask)
    test_case = next(c for c in cases if c.split == "test")
    assert test_case.mask is None and test_case.subtype is None and not test_case.labelled
    assert test_case.case_id.startswith("quiz_") and len(test_case.number) == 3


def test_quiz_case_is_frozen(tmp_path):
    case = QuizCase("quiz_0_041", "train", 0, tmp_path / "a", tmp_path / "b")
    with pytest.raises(Exception):
        case.case_id = "x"  # type: ignore[misc]
    assert case.number == "041" and case.labelled


def test_stray_non_nifti_and_hidden_files_are_ignored(quiz_builder):
    root = quiz_builder.standard(n_train=1, n_validation=1, n_test=1)
    (root / ".DS_Store").write_bytes(b"\0\1")
    (root / "train" / "subtype0" / ".DS_Store").write_bytes(b"\0\1")
    (root / "train" / "subtype0" / "._quiz_0_001_0000.nii.gz").write_bytes(b"resource fork")
    (root / "test" / "notes.txt").write_text("hello")
    (root / "README.md").write_text("quiz")
    (root / "__MACOSX" / "train").mkdir(parents=True)
    (root / "__MACOSX" / "train" / "quiz_0_001.nii.gz").write_bytes(b"junk")
    cases, problems = discover_quiz_cases(root)
    assert problems == []
    assert len(cases) == 7


def test_nifti_outside_the_layout_is_reported(quiz_builder):
    root = quiz_builder.standard(n_train=1, n_validation=1, n_test=1)
    stray = quiz_builder.add_case("train", 0, 50)
    misplaced = root / "train" / stray.image.name
    stray.image.rename(misplaced)
    (root / "train" / "subtype3").mkdir()
    extra = root / "train" / "subtype3" / "quiz_3_051_0000.nii.gz"
    extra.write_bytes(b"x")
    cases, problems = discover_quiz_cases(root)
    text = "\n".join(problems)
    assert "train/quiz_0_050_0000.nii.gz: NIfTI file outside the expected layout" in text
    assert "train/subtype3/quiz_3_051_0000.nii.gz: NIfTI file outside the expected layout" in text
    # the mask left behind in subtype0 has lost its image
    assert "train/subtype0/quiz_0_050.nii.gz: mask without image" in text


def test_missing_quiz_dir(tmp_path):
    cases, problems = discover_quiz_cases(tmp_path / "nope")
    assert cases == [] and len(problems) == 1
    assert str(tmp_path / "nope") in problems[0] and "does not exist" in problems[0]


def test_quiz_dir_is_a_file(tmp_path):
    f = tmp_path / "quiz"
    f.write_text("not a folder")
    cases, problems = discover_quiz_cases(f)
    assert cases == [] and problems == [f"{f}: the quiz data path is not a folder"]


def test_split_without_subtype_folders_is_one_problem(quiz_builder):
    root = quiz_builder.standard(n_train=1, n_validation=1, n_test=1)
    for sub in (root / "validation").iterdir():
        for f in sub.iterdir():
            f.unlink()
        sub.rmdir()
    _, problems = discover_quiz_cases(root)
    assert problems == [
        "validation: no cases: the validation/ folder has none of the subtype0/, subtype1/, subtype2/ folders and no "
        "image and mask pairs ({ID}_0000.nii.gz, {ID}.nii.gz)"
    ]


def test_problems_are_relative_to_quiz_dir(quiz_builder):
    root = quiz_builder.standard(n_train=1, n_validation=1, n_test=1)
    (root / "test" / "quiz_1_2_3.nii.gz").write_bytes(b"")
    _, problems = discover_quiz_cases(root)
    assert len(problems) == 1
    assert problems[0].startswith("test/quiz_1_2_3.nii.gz: ")
    assert not Path(problems[0].split(":")[0]).is_absolute()


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_a_plain_layout_holds_pairs_without_subtypes(tmp_path):
    """A segmentation set as nnU-Net lays it out: pairs directly in train/ (and validation/), any case ids."""
    root = tmp_path / "seg"
    _touch(root / "train", "pan-01_0000.nii.gz", "pan-01.nii.gz", "case_7_0000.nii.gz", "case_7.nii.gz")
    _touch(root / "validation", "v1_0000.nii.gz", "v1.nii.gz")
    cases, problems = discover_quiz_cases(root, allow_partial=True, splits=("train", "validation"))
    assert problems == []
    assert [(c.case_id, c.split, c.subtype) for c in cases] == [
        ("case_7", "train", None),
        ("pan-01", "train", None),
        ("v1", "validation", None),
    ]
    assert cases[0].image.name == "case_7_0000.nii.gz" and cases[0].mask.name == "case_7.nii.gz"


def test_a_plain_layouts_problems_name_their_files(tmp_path):
    root = tmp_path / "seg"
    _touch(root / "train", "a_0000.nii.gz", "b.nii.gz", "c d_0000.nii.gz", "e.nii", "same_0000.nii.gz", "same.nii.gz")
    _touch(root / "validation", "same_0000.nii.gz", "same.nii.gz")
    _, problems = discover_quiz_cases(root, allow_partial=True, splits=("train", "validation"))
    assert sorted(problems) == sorted(
        [
            "train/a_0000.nii.gz: image without mask: a.nii.gz is missing next to it",
            "train/b.nii.gz: mask without image: b_0000.nii.gz is missing next to it",
            "train/c d_0000.nii.gz: file name does not match; expected {ID}_0000.nii.gz (image) and {ID}.nii.gz "
            "(mask), ID of letters, digits, _ and -",
            "train/e.nii: uncompressed .nii files are not supported; expected {ID}_0000.nii.gz (image) and "
            "{ID}.nii.gz (mask), ID of letters, digits, _ and -",
            "train/same_0000.nii.gz, validation/same_0000.nii.gz: case id same is used by 2 cases (unique across "
            "splits)",
        ]
    )


def test_files_next_to_subtype_folders_are_strays(quiz_builder):
    root = quiz_builder.standard(n_train=1, n_validation=1, n_test=1)
    _touch(root / "train", "loose_0000.nii.gz", "loose.nii.gz")
    cases, problems = discover_quiz_cases(root)
    assert not [c for c in cases if c.case_id == "loose"]
    assert sorted(p.split(":")[0] for p in problems) == ["train/loose.nii.gz", "train/loose_0000.nii.gz"], problems
    assert all("outside the expected layout" in p for p in problems)
