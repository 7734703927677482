"""Validation of a whole quiz folder: every bad-input kind is reported, naming its file, all at once."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from pancreas_mtl.data.validation import mask_value_problem, spatial_shape, validate_quiz_folder
from pancreas_mtl.errors import QuizDataError, UserInputError


def problems_of(root, n_workers: int = 1) -> list[str]:
    with pytest.raises(QuizDataError) as exc:
        validate_quiz_folder(root, n_workers=n_workers)
    assert exc.value.problems, "a QuizDataError must list its problems"
    return exc.value.problems


def only_problem(root) -> str:
    problems = problems_of(root)
    assert len(problems) == 1, problems
    return problems[0]


def rel(path, root) -> str:
    return path.relative_to(root).as_posix()


@pytest.fixture
def base(quiz_builder):
    """A small valid folder (1 train + 1 validation case per subtype, 1 test image) to break."""
    quiz_builder.standard(n_train=1, n_validation=1, n_test=1)
    return quiz_builder


# -- valid input ----------------------------------------------------------------------------------


def test_valid_folder_passes(quiz_dir, quiz_builder):
    cases = validate_quiz_folder(quiz_dir)
    assert len(cases) == len(quiz_builder.cases) == 11
    assert {c.case_id for c in cases} == {c.case_id for c in quiz_builder.cases.values()}


def test_valid_folder_passes_in_a_process_pool(quiz_dir):
    assert validate_quiz_folder(quiz_dir, n_workers=2) == validate_quiz_folder(quiz_dir, n_workers=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int16])
def test_quiz_mask_values_are_accepted(base, dtype):
    shape = (8, 10, 6)
    mask = np.zeros(shape)
    mask[1:4, 1:4, 1:3] = base.PANCREAS_FLOAT if np.issubdtype(dtype, np.floating) else 1
    mask[2, 2, 2] = 2.0000001 if np.issubdtype(dtype, np.floating) else 2
    base.add_case("train", 1, shape=shape, mask_data=mask.astype(dtype))
    assert len(validate_quiz_folder(base.root)) == 8


def test_trailing_singleton_4d_is_accepted_as_3d(base):
    img = base.synthetic_image((8, 10, 6), np.int16)[..., None]
    mask = base.synthetic_mask((8, 10, 6), np.float32)[..., None]
    base.add_case("train", 2, shape=(8, 10, 6), image_data=img, mask_data=mask)
    assert len(validate_quiz_folder(base.root)) == 8


def test_spatial_shape():
    assert spatial_shape((4, 5, 6)) == (4, 5, 6)
    assert spatial_shape((4, 5, 6, 1)) == (4, 5, 6)
    assert spatial_shape((4, 5, 6, 1, 1)) == (4, 5, 6)
    assert spatial_shape((4, 5, 6, 2)) is None
    assert spatial_shape((4, 5)) is None


def test_small_affine_difference_is_tolerated(base):
    case = base.add_case("train", 0, number=60)
    base.write_nifti(case.mask, case.mask_data, case.affine + 5e-6)
    assert len(validate_quiz_folder(base.root)) == 8


# -- pairs -------------------------------------------------------------------------------------------


def test_image_without_mask(base):
    case = base.add_case("train", 0, number=70, mask=False)
    p = only_problem(base.root)
    assert p.startswith(f"{rel(case.image, base.root)}: image without mask")
    assert "quiz_0_070.nii.gz" in p


def test_mask_without_image(base):
    case = base.add_case("validation", 2, number=71, image=False)
    p = only_problem(base.root)
    assert p.startswith("validation/subtype2/quiz_2_071.nii.gz: mask without image")
    assert rel(case.mask, base.root) in p


# -- geometry ------------------------------------------------------------------------------------------


def test_shape_mismatch(base):
    case = base.add_case("train", 1, number=72, shape=(8, 10, 6), mask_shape=(8, 10, 7))
    p = only_problem(base.root)
    assert p.startswith(f"{rel(case.mask, base.root)}: mask shape (8, 10, 7) does not match image shape (8, 10, 6)")
    assert rel(case.image, base.root) in p


def test_affine_mismatch(base):
    affine = base.lps_affine((0.8, 0.8, 2.5))
    shifted = affine.copy()
    shifted[2, 3] += 0.5
    case = base.add_case("train", 1, number=73, spacing=(0.8, 0.8, 2.5), mask_affine=shifted)
    # add_case writes the image with its own origin; rewrite both with known affines
    base.write_nifti(case.image, case.image_data, affine)
    p = only_problem(base.root)
    assert p.startswith(f"{rel(case.mask, base.root)}: mask affine does not match the image affine")
    assert rel(case.image, base.root) in p


def test_spacing_mismatch_is_an_affine_mismatch(base):
    case = base.add_case("validation", 0, number=74, spacing=(0.8, 0.8, 2.5))
    base.write_nifti(case.mask, case.mask_data, base.lps_affine((0.8, 0.8, 3.0)))
    base.write_nifti(case.image, case.image_data, base.lps_affine((0.8, 0.8, 2.5)))
    assert only_problem(base.root).startswith(f"{rel(case.mask, base.root)}: mask affine does not match")


# -- mask values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_value, dtype, expect",
    [
        (0.5, np.float32, "away from an integer"),
        (1.01, np.float64, "away from an integer"),
        (3.0, np.float32, "outside {0, 1, 2}"),
        (-1.0, np.float64, "outside {0, 1, 2}"),
        (np.nan, np.float32, "NaN/inf"),
        (np.inf, np.float64, "NaN/inf"),
        (5, np.uint8, "outside {0, 1, 2}"),
        (-1, np.int16, "outside {0, 1, 2}"),
    ],
)
def test_bad_mask_values(base, bad_value, dtype, expect):
    mask = base.synthetic_mask((8, 10, 6), np.float64)
    mask = np.where(mask > 0, np.rint(mask), 0).astype(dtype)
    mask[0, 0, 0] = bad_value
    case = base.add_case("train", 2, number=75, mask_data=mask)
    p = only_problem(base.root)
    assert p.startswith(f"{rel(case.mask, base.root)}: mask values are not 0, 1, 2")
    assert expect in p


def test_mask_value_problem_counts():
    data = np.zeros((4, 4, 4), np.float32)
    data[0, 0, :2] = 1.0000152587890625
    assert mask_value_problem(data) is None
    data[1, 1, 1] = 7
    data[2, 2, 2] = 0.4
    msg = mask_value_problem(data)
    assert "1 voxel(s) more than 0.001 away" in msg and "1 voxel(s) that round to a label outside" in msg
    assert "7.0" in msg and "0.4" in msg


def test_nan_in_image(base):
    img = base.synthetic_image((8, 10, 6), np.float64)
    img[3, 3, 3] = np.nan
    case = base.add_case("train", 0, number=76, image_data=img)
    assert only_problem(base.root) == f"{rel(case.image, base.root)}: image contains 1 NaN/inf voxel(s)"


# -- unreadable files ------------------------------------------------------------------------------------


def test_truncated_image(base):
    case = base.add_case("train", 0, number=77, shape=(30, 30, 20), image_dtype=np.float64)
    base.truncate(case.image, 0.5)
    p = only_problem(base.root)
    assert p.startswith(f"{rel(case.image, base.root)}: unreadable, truncated or corrupt file")


def test_truncated_mask(base):
    case = base.add_case("validation", 1, number=78, shape=(30, 30, 20))
    base.truncate(case.mask, 0.6)
    assert only_problem(base.root).startswith(f"{rel(case.mask, base.root)}: unreadable, truncated or corrupt")


def test_corrupt_byte_is_caught_by_the_gzip_crc(base):
    case = base.add_case("train", 1, number=79, shape=(30, 30, 20), image_dtype=np.float64)
    raw = bytearray(case.image.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    case.image.write_bytes(bytes(raw))
    assert only_problem(base.root).startswith(f"{rel(case.image, base.root)}: unreadable, truncated or corrupt")


def test_not_gzip_although_named_nii_gz(base):
    case = base.add_case("train", 2, number=80)
    with gzip.open(case.image, "rb") as fh:
        plain = fh.read()
    case.image.write_bytes(plain)  # an uncompressed NIfTI under a .nii.gz name
    assert only_problem(base.root).startswith(f"{rel(case.image, base.root)}: unreadable, truncated or corrupt")


def test_garbage_file(base):
    path = base.root / "test" / "quiz_081_0000.nii.gz"
    path.write_bytes(b"this is not a nifti file at all")
    assert only_problem(base.root).startswith("test/quiz_081_0000.nii.gz: unreadable, truncated or corrupt")


def test_empty_file(base):
    path = base.root / "test" / "quiz_082_0000.nii.gz"
    path.write_bytes(b"")
    assert only_problem(base.root).startswith("test/quiz_082_0000.nii.gz: ")


# -- dimensionality --------------------------------------------------------------------------------------


def test_two_channel_4d_image_is_rejected(base):
    img = np.stack([base.synthetic_image((8, 10, 6), np.int16)] * 2, axis=-1)
    case = base.add_case("train", 0, number=83, image_data=img)
    assert only_problem(base.root) == (
        f"{rel(case.image, base.root)}: not a 3D volume (shape (8, 10, 6, 2)); expected (x, y, z) or (x, y, z, 1)"
    )


def test_2d_image_is_rejected(base):
    path = base.root / "test" / "quiz_084_0000.nii.gz"
    base.write_nifti(path, np.zeros((8, 10), np.int16), base.lps_affine())
    assert only_problem(base.root).startswith("test/quiz_084_0000.nii.gz: not a 3D volume (shape (8, 10))")


def test_4d_mask_is_rejected(base):
    mask = np.stack([base.synthetic_mask((8, 10, 6), np.float32)] * 3, axis=-1)
    case = base.add_case("validation", 0, number=85, mask_data=mask)
    assert only_problem(base.root).startswith(f"{rel(case.mask, base.root)}: not a 3D volume")


# -- names ------------------------------------------------------------------------------------------------


def test_name_not_matching_the_pattern(base):
    (base.root / "train" / "subtype0" / "case_001_0000.nii.gz").write_bytes(b"x")
    p = only_problem(base.root)
    assert p.startswith("train/subtype0/case_001_0000.nii.gz: file name does not match the quiz pattern")


def test_test_style_name_in_train_folder(base):
    src = next(c for c in base.cases.values() if c.split == "test")
    shutil.copyfile(src.image, base.root / "train" / "subtype0" / "quiz_037_0000.nii.gz")
    p = only_problem(base.root)
    assert p.startswith("train/subtype0/quiz_037_0000.nii.gz: test-style name")


def test_train_style_name_in_test_folder(base):
    src = base.labelled("train")[0]
    shutil.copyfile(src.image, base.root / "test" / "quiz_0_090_0000.nii.gz")
    p = only_problem(base.root)
    assert p.startswith("test/quiz_0_090_0000.nii.gz: train/validation-style name")


def test_mask_in_test_folder(base):
    src = base.labelled("train")[0]
    shutil.copyfile(src.mask, base.root / "test" / "quiz_091.nii.gz")
    assert only_problem(base.root).startswith("test/quiz_091.nii.gz: test/ holds images only")


def test_uncompressed_nii_is_rejected(base):
    src = base.labelled("train")[0]
    (base.root / "train" / "subtype0" / "quiz_0_092_0000.nii").write_bytes(b"x")
    assert src.image.exists()
    assert only_problem(base.root).startswith("train/subtype0/quiz_0_092_0000.nii: uncompressed .nii")


def test_subtype_folder_and_prefix_disagree(base):
    case = base.add_case("train", 0, number=55, folder_subtype=1)
    assert rel(case.image, base.root) == "train/subtype1/quiz_0_055_0000.nii.gz"
    problems = problems_of(base.root)
    assert len(problems) == 2, problems  # the image and the mask
    assert problems[0].startswith("train/subtype1/quiz_0_055.nii.gz: the name says subtype 0")
    assert problems[1].startswith("train/subtype1/quiz_0_055_0000.nii.gz: the name says subtype 0")
    assert all("subtype1/ folder" in p for p in problems)


# -- duplicates ---------------------------------------------------------------------------------------------


def test_duplicate_number_across_subtypes(base):
    base.add_case("train", 0, number=100)
    base.add_case("train", 2, number=100)
    p = only_problem(base.root)
    assert "train/subtype0/quiz_0_100_0000.nii.gz" in p and "train/subtype2/quiz_2_100_0000.nii.gz" in p
    assert "case number 100 is used by 2 different cases" in p


def test_duplicate_case_across_splits(base):
    base.add_case("train", 1, number=101)
    base.add_case("validation", 1, number=101)
    p = only_problem(base.root)
    assert "train/subtype1/quiz_1_101_0000.nii.gz" in p and "validation/subtype1/quiz_1_101_0000.nii.gz" in p


def test_test_numbers_are_their_own_namespace(base):
    # quiz_102 (test) and quiz_2_102 (validation) are different case ids; the quiz numbers them separately.
    base.add_case("validation", 2, number=102)
    base.add_test(number=102)
    assert len(validate_quiz_folder(base.root)) > 0


# -- folders ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_missing_split_folder(base, split):
    shutil.rmtree(base.root / split)
    p = only_problem(base.root)
    assert p.startswith(f"{split}: the {split}/ folder is missing")


def test_missing_quiz_dir(tmp_path):
    p = only_problem(tmp_path / "missing")
    assert p == f"{tmp_path / 'missing'}: the quiz data folder does not exist"


def test_empty_subtype_folder(base):
    for f in (base.root / "train" / "subtype2").iterdir():
        f.unlink()
    (base.root / "train" / "subtype2" / ".DS_Store").write_bytes(b"x")
    assert only_problem(base.root).startswith("train/subtype2: the subtype folder is empty")


def test_missing_subtype_folder(base):
    shutil.rmtree(base.root / "validation" / "subtype1")
    assert only_problem(base.root).startswith("validation/subtype1: the subtype folder is missing")


def test_empty_test_folder(base):
    for f in (base.root / "test").iterdir():
        f.unlink()
    assert only_problem(base.root).startswith("test: the test/ folder is empty")


@pytest.mark.parametrize("split", ["train", "validation"])
def test_split_with_no_cases_is_rejected(base, split):
    for sub in (base.root / split).iterdir():
        for f in sub.iterdir():
            f.unlink()
    problems = problems_of(base.root)
    assert problems == [
        f"{split}/subtype{s}: the subtype folder is empty (no .nii.gz images or masks)" for s in (0, 1, 2)
    ]


# -- everything at once, read-only ----------------------------------------------------------------------------


def test_all_problems_are_reported_at_once(base):
    orphan = base.add_case("train", 0, number=110, mask=False)
    bad_values = base.add_case("validation", 1, number=111)
    m = bad_values.mask_data.copy()
    m[0, 0, 0] = 3
    base.write_nifti(bad_values.mask, m, bad_values.affine)
    wrong_shape = base.add_case("train", 2, number=112, mask_shape=(8, 10, 5))
    problems = problems_of(base.root)
    assert len(problems) == 3, problems
    text = "\n".join(problems)
    for path in (orphan.image, bad_values.mask, wrong_shape.mask):
        assert rel(path, base.root) in text


def test_same_problems_with_a_process_pool(base):
    base.add_case("train", 0, number=120, mask_shape=(8, 10, 5))
    base.truncate(base.add_case("validation", 2, number=121, shape=(30, 30, 20)).image)
    base.add_case("train", 1, number=122, image=False)
    assert problems_of(base.root, n_workers=2) == problems_of(base.root, n_workers=1)


def test_validator_never_modifies_the_folder(base, tree_digest):
    base.add_case("train", 0, number=130, mask_shape=(8, 10, 5))
    base.truncate(base.add_case("validation", 0, number=131, shape=(30, 30, 20)).mask)
    (base.root / "train" / "subtype1" / ".DS_Store").write_bytes(b"x")
    before = tree_digest(base.root)
    problems_of(base.root, n_workers=2)
    assert tree_digest(base.root) == before


def test_error_is_a_user_input_error_and_renders_every_problem(base):
    base.add_case("train", 0, number=140, mask=False)
    base.add_case("train", 1, number=141, image=False)
    with pytest.raises(UserInputError) as exc:
        validate_quiz_folder(base.root)
    text = str(exc.value)
    assert "(2 problem(s))" in text
    assert "train/subtype0/quiz_0_140_0000.nii.gz" in text and "train/subtype1/quiz_1_141.nii.gz" in text
