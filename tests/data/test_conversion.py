"""Conversion of a quiz folder to an nnU-Net v2 raw dataset, on small synthetic NIfTI cases."""

from __future__ import annotations

import csv
import json
import logging
import runpy
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pancreas_mtl.data import conversion
from pancreas_mtl.data.case_table import read_case_table
from pancreas_mtl.data.conversion import convert_quiz_to_nnunet, convert_test_images, dataset_json, make_splits
from pancreas_mtl.data.validation import validate_quiz_folder
from pancreas_mtl.errors import QuizDataError, UserInputError

REPO = Path(__file__).resolve().parents[2]
NAME = "Dataset501_PancreasQuiz"


def outputs(tmp_path: Path) -> dict[str, Path]:
    out = tmp_path / "out"
    return {
        "raw_dataset_dir": out / "nnUNet_raw" / NAME,
        "splits_json": out / "splits_final.json",
        "case_table_csv": out / "case_table.csv",
    }


def convert(quiz_dir, tmp_path, **kwargs):
    paths = outputs(tmp_path)
    summary = convert_quiz_to_nnunet(quiz_dir, **paths, **kwargs)
    return summary, paths


def test_outputs(tmp_path: Path) -> dict[str, Path]:
    out = tmp_path / "out"
    return {"images_dir": out / "test_images", "test_table_csv": out / "test_cases.csv"}


test_outputs.__test__ = False  # not a test


def convert_tests(quiz_dir, tmp_path, **kwargs):
    paths = test_outputs(tmp_path)
    return convert_test_images(quiz_dir, **paths, **kwargs), paths


def assert_same_grid_sitk(a: Path, b: Path) -> None:
    ia, ib = sitk.ReadImage(str(a)), sitk.ReadImage(str(b))
    assert ia.GetSize() == ib.GetSize()
    assert ia.GetOrigin() == ib.GetOrigin()
    assert ia.GetSpacing() == ib.GetSpacing()
    assert ia.GetDirection() == ib.GetDirection()


@pytest.fixture
def converted(quiz_dir, quiz_builder, tmp_path):
    summary, paths = convert(quiz_dir, tmp_path)
    test_summary, test_paths = convert_tests(quiz_dir, tmp_path)
    return SimpleNamespace(
        summary=summary, test_summary=test_summary, builder=quiz_builder, quiz_dir=quiz_dir, **paths, **test_paths
    )


# -- layout and metadata ------------------------------------------------------------------------------


def test_dataset_layout(converted):
    raw = converted.raw_dataset_dir
    b = converted.builder
    labelled = b.labelled()
    tests = [c for c in b.cases.values() if c.split == "test"]
    # the test images are not in the raw dataset, which training reads: a new test image never retrains
    assert sorted(p.name for p in raw.iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
    assert sorted(p.name for p in (raw / "imagesTr").iterdir()) == sorted(f"{c.case_id}_0000.nii.gz" for c in labelled)
    assert sorted(p.name for p in (raw / "labelsTr").iterdir()) == sorted(f"{c.case_id}.nii.gz" for c in labelled)
    images = converted.images_dir
    assert sorted(p.name for p in images.iterdir()) == sorted(f"{c.case_id}_0000.nii.gz" for c in tests)
    # no temporary folders or files left next to the outputs
    assert sorted(p.name for p in raw.parent.iterdir()) == [NAME]
    assert sorted(p.name for p in converted.splits_json.parent.iterdir()) == [
        "case_table.csv",
        "nnUNet_raw",
        "splits_final.json",
        "test_cases.csv",
        "test_images",
    ]


def test_summary(converted):
    s = converted.summary
    assert s["dataset_name"] == NAME and s["raw_dataset_dir"] == str(converted.raw_dataset_dir)
    assert s["cases"] == {"train": 6, "validation": 3}
    assert s["subtypes"] == {"train": {"0": 2, "1": 2, "2": 2}, "validation": {"0": 1, "1": 1, "2": 1}}
    assert s["seconds"] >= 0
    assert converted.test_summary["cases"] == {"test": 2}
    assert converted.test_summary["images_dir"] == str(converted.images_dir)


def test_dataset_json(converted):
    d = json.loads((converted.raw_dataset_dir / "dataset.json").read_text())
    assert d["channel_names"] == {"0": "CT"}
    assert d["labels"] == {"background": 0, "pancreas": 1, "lesion": 2}
    assert d["numTraining"] == 9
    assert d["file_ending"] == ".nii.gz"
    assert d["licence"] == "CC BY-NC 4.0"
    assert d["name"] == NAME and d["description"]


def test_region_labels_declare_nnunets_regions_over_the_same_masks(quiz_dir, tmp_path):
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from pancreas_mtl.inference.lesion_prior import lesion_output_channel

    _, paths = convert(quiz_dir, tmp_path / "regions", labels="regions")
    _, softmax_paths = convert(quiz_dir, tmp_path / "softmax")
    d = json.loads((paths["raw_dataset_dir"] / "dataset.json").read_text())
    assert d["labels"] == {"background": 0, "whole_pancreas": [1, 2], "lesion": [2]}
    assert d["regions_class_order"] == [1, 2]
    manager = LabelManager(d["labels"], d["regions_class_order"])
    assert manager.has_regions and manager.num_segmentation_heads == 2
    assert [tuple(r) for r in manager.foreground_regions] == [(1, 2), (2,)]
    assert lesion_output_channel(manager) == 1
    for mask in sorted((paths["raw_dataset_dir"] / "labelsTr").iterdir()):  # the masks are the softmax run's
        assert mask.read_bytes() == (softmax_paths["raw_dataset_dir"] / "labelsTr" / mask.name).read_bytes()


def test_an_unknown_label_mode_is_refused_before_anything_is_written(quiz_dir, tmp_path):
    with pytest.raises(UserInputError, match="training.labels must be one of softmax, regions, got 'sigmoid'"):
        convert(quiz_dir, tmp_path, labels="sigmoid")
    assert not (tmp_path / "out").exists()


def test_splits_fold0_is_the_official_split(converted):
    splits = json.loads(converted.splits_json.read_text())
    b = converted.builder
    assert isinstance(splits, list) and len(splits) == 1
    assert set(splits[0]) == {"train", "val"}
    assert splits[0]["train"] == sorted(c.case_id for c in b.labelled("train"))
    assert splits[0]["val"] == sorted(c.case_id for c in b.labelled("validation"))
    assert not set(splits[0]["train"]) & set(splits[0]["val"])


def _table_rows(path):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["case_id", "split", "subtype", "image", "mask"]
        return {r["case_id"]: r for r in reader}


def test_case_table_lists_the_labelled_cases_and_the_test_table_the_test_images(converted):
    rows = _table_rows(converted.case_table_csv)
    test_rows = _table_rows(converted.test_table_csv)
    b = converted.builder
    assert len(rows) == len(b.labelled()) == 9 and len(test_rows) == 2
    for c in b.cases.values():
        if c.split == "test":
            row = test_rows[c.case_id]
            assert row["split"] == "test" and row["subtype"] == "" and row["mask"] == ""
            assert row["image"] == f"{c.case_id}_0000.nii.gz"
            assert (converted.images_dir / row["image"]).is_file()
        else:
            row = rows[c.case_id]
            assert row["split"] == c.split and int(row["subtype"]) == c.subtype
            assert row["image"] == f"imagesTr/{c.case_id}_0000.nii.gz"
            assert row["mask"] == f"labelsTr/{c.case_id}.nii.gz"
            assert (converted.raw_dataset_dir / row["image"]).is_file()
    # both read by the one reader of the format
    assert read_case_table(converted.test_table_csv)["subtype"].isna().all()


def test_make_splits_rejects_unknown_scheme(quiz_dir):
    cases = validate_quiz_folder(quiz_dir)
    assert make_splits(cases) == make_splits(cases, scheme="official")
    with pytest.raises(UserInputError, match="unknown split scheme 'kfold-7'"):
        make_splits(cases, scheme="kfold-7")
    assert dataset_json(cases)["numTraining"] == 9


# -- images and labels ------------------------------------------------------------------------------------


def test_images_are_byte_for_byte_copies(converted):
    raw = converted.raw_dataset_dir
    for c in converted.builder.cases.values():
        folder = converted.images_dir if c.split == "test" else raw / "imagesTr"
        assert (folder / f"{c.case_id}_0000.nii.gz").read_bytes() == c.image.read_bytes()


def test_labels_are_rounded_uint8(converted):
    dtypes_seen = set()
    for c in converted.builder.labelled():
        lab = nib.load(str(converted.raw_dataset_dir / "labelsTr" / f"{c.case_id}.nii.gz"))
        src = nib.load(str(c.mask))
        dtypes_seen.add(src.get_data_dtype().name)
        assert lab.get_data_dtype() == np.uint8
        data = np.asanyarray(lab.dataobj)
        assert data.dtype == np.uint8
        assert set(np.unique(data)) <= {0, 1, 2} and {1, 2} <= set(np.unique(data))
        np.testing.assert_array_equal(data, np.rint(np.asanyarray(src.dataobj)).astype(np.uint8))
        assert np.isnan(lab.header["scl_slope"]) or lab.header["scl_slope"] == 1
        assert np.isnan(lab.header["scl_inter"]) or lab.header["scl_inter"] == 0
    # the fixture covers the quiz's mask dtypes, incl. float masks storing pancreas as 1.0000152587890625
    assert {"float32", "float64", "uint8"} <= dtypes_seen


def test_labels_are_on_the_image_grid(converted):
    raw = converted.raw_dataset_dir
    for c in converted.builder.labelled():
        image_path = raw / "imagesTr" / f"{c.case_id}_0000.nii.gz"
        label_path = raw / "labelsTr" / f"{c.case_id}.nii.gz"
        img, lab = nib.load(str(image_path)), nib.load(str(label_path))
        assert lab.shape == img.shape
        assert np.array_equal(lab.affine, img.affine)
        assert np.array_equal(lab.get_qform(), img.get_qform())
        assert np.array_equal(lab.get_sform(), img.get_sform())
        for key in ("qform_code", "sform_code", "xyzt_units"):
            assert lab.header[key] == img.header[key], key
        assert np.array_equal(lab.header["pixdim"][1:4], img.header["pixdim"][1:4])
        assert_same_grid_sitk(image_path, label_path)


def test_label_follows_image_grid_when_mask_affine_differs_slightly(quiz_builder, tmp_path):
    quiz_builder.standard(n_train=1, n_validation=1, n_test=1)
    case = quiz_builder.add_case("train", 0, number=60)
    quiz_builder.write_nifti(case.mask, case.mask_data, case.affine + 5e-6, qform_code=2, sform_code=0)
    _, paths = convert(quiz_builder.root, tmp_path)
    label = paths["raw_dataset_dir"] / "labelsTr" / "quiz_0_060.nii.gz"
    image = paths["raw_dataset_dir"] / "imagesTr" / "quiz_0_060_0000.nii.gz"
    assert np.array_equal(nib.load(str(label)).affine, nib.load(str(case.image)).affine)
    assert nib.load(str(label)).header["sform_code"] == 1
    assert_same_grid_sitk(image, label)


def test_trailing_singleton_4d_is_written_as_3d(quiz_builder, tmp_path):
    quiz_builder.standard(n_train=1, n_validation=1, n_test=1)
    img = quiz_builder.synthetic_image((8, 10, 6), np.int32, seed=3)
    mask = quiz_builder.synthetic_mask((8, 10, 6), np.float64, seed=3)
    case = quiz_builder.add_case("train", 1, number=61, image_data=img[..., None], mask_data=mask[..., None])
    _, paths = convert(quiz_builder.root, tmp_path)
    out_img = nib.load(str(paths["raw_dataset_dir"] / "imagesTr" / "quiz_1_061_0000.nii.gz"))
    out_lab = nib.load(str(paths["raw_dataset_dir"] / "labelsTr" / "quiz_1_061.nii.gz"))
    assert out_img.shape == out_lab.shape == (8, 10, 6)
    assert out_img.get_data_dtype() == np.int32 and out_lab.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(out_img.dataobj), img)
    src = nib.load(str(case.image))
    assert np.array_equal(out_img.affine, src.affine) and np.array_equal(out_lab.affine, src.affine)
    for key in src.header.keys():  # only the dim field changes
        if key != "dim":
            np.testing.assert_array_equal(out_img.header[key], src.header[key], err_msg=key)
    assert_same_grid_sitk(
        paths["raw_dataset_dir"] / "imagesTr" / "quiz_1_061_0000.nii.gz",
        paths["raw_dataset_dir"] / "labelsTr" / "quiz_1_061.nii.gz",
    )


@pytest.mark.parametrize("n_workers", [1, 2])
def test_masks_without_lesion_or_pancreas_are_converted_with_a_warning(quiz_builder, tmp_path, caplog, n_workers):
    """Real labelled cases hold both labels; a mask lacking one is converted unchanged, with a warning
    naming the file that reaches the parent's log also when the cases are converted in a process pool."""
    quiz_builder.standard(n_train=1, n_validation=1, n_test=1)
    no_lesion = quiz_builder.synthetic_mask((8, 10, 6), np.float32, seed=5)
    no_lesion[np.rint(no_lesion) == 2] = quiz_builder.PANCREAS_FLOAT  # the lesion painted over as pancreas
    no_pancreas = quiz_builder.synthetic_mask((8, 10, 6), np.float64, seed=6)
    no_pancreas[np.rint(no_pancreas) == 1] = 0
    lesionless = quiz_builder.add_case("train", 1, number=40, mask_data=no_lesion)
    pancreasless = quiz_builder.add_case("validation", 2, number=41, mask_data=no_pancreas)
    caplog.set_level(logging.INFO, logger="pancreas_mtl")
    summary, paths = convert(quiz_builder.root, tmp_path, n_workers=n_workers)

    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "pancreas_mtl.data.conversion" and r.levelno == logging.WARNING
    ]
    assert [w for w in warnings if str(lesionless.mask) in w and "no lesion (label 2)" in w]
    assert [w for w in warnings if str(pancreasless.mask) in w and "no pancreas (label 1)" in w]
    assert f"1 labelled mask(s) lack a lesion (label 2): {lesionless.mask}" in warnings
    assert f"1 labelled mask(s) lack a pancreas (label 1): {pancreasless.mask}" in warnings
    assert not [w for w in warnings if "quiz_0_" in w]  # the complete masks are not reported
    assert len(warnings) == 4

    # converted as any other case: same counts, splits and table, labels are the rounded masks
    assert summary["cases"] == {"train": 4, "validation": 4}
    splits = json.loads(paths["splits_json"].read_text())
    assert "quiz_1_040" in splits[0]["train"] and "quiz_2_041" in splits[0]["val"]
    for case, expected in ((lesionless, {0, 1}), (pancreasless, {0, 2})):
        lab = nib.load(str(paths["raw_dataset_dir"] / "labelsTr" / f"{case.case_id}.nii.gz"))
        data = np.asanyarray(lab.dataobj)
        assert lab.get_data_dtype() == np.uint8 and set(np.unique(data).tolist()) == expected
        np.testing.assert_array_equal(data, np.rint(case.mask_data).astype(np.uint8))
        assert np.array_equal(lab.affine, nib.load(str(case.image)).affine)
        image_out = paths["raw_dataset_dir"] / "imagesTr" / f"{case.case_id}_0000.nii.gz"
        assert image_out.read_bytes() == case.image.read_bytes()


def test_complete_masks_give_no_missing_label_warning(quiz_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pancreas_mtl")
    convert(quiz_dir, tmp_path, n_workers=2)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "label" in r.getMessage()]


# -- parallel, logging, read-only input ----------------------------------------------------------------------


def test_process_pool_gives_the_same_dataset(quiz_dir, tmp_path, tree_digest, caplog):
    caplog.set_level(logging.INFO, logger="pancreas_mtl")
    _, serial = convert(quiz_dir, tmp_path / "serial")
    _, parallel = convert(quiz_dir, tmp_path / "parallel", n_workers=2)
    assert "converted 9/9 case(s)" in caplog.text
    assert any(r.name == "pancreas_mtl.data.conversion" for r in caplog.records)
    for key in ("splits_json", "case_table_csv"):
        assert serial[key].read_bytes() == parallel[key].read_bytes()
    a, b = serial["raw_dataset_dir"], parallel["raw_dataset_dir"]
    assert tree_digest(a).keys() == tree_digest(b).keys()
    for p in a.rglob("*.nii.gz"):
        q = b / p.relative_to(a)
        ia, ib = nib.load(str(p)), nib.load(str(q))
        assert ia.header == ib.header
        np.testing.assert_array_equal(np.asanyarray(ia.dataobj), np.asanyarray(ib.dataobj))


def test_input_folder_is_unchanged(quiz_dir, tmp_path, tree_digest):
    (quiz_dir / ".DS_Store").write_bytes(b"\0")
    before = tree_digest(quiz_dir)
    convert(quiz_dir, tmp_path, n_workers=2)
    assert tree_digest(quiz_dir) == before


# -- failures write nothing --------------------------------------------------------------------------------


def test_nothing_is_written_when_validation_fails(quiz_builder, tmp_path, tree_digest):
    quiz_builder.standard(n_train=1, n_validation=1, n_test=1)
    quiz_builder.add_case("train", 0, number=70, mask=False)
    quiz_builder.truncate(quiz_builder.add_case("validation", 2, number=71, shape=(30, 30, 20)).mask)
    before = tree_digest(quiz_builder.root)
    with pytest.raises(QuizDataError) as exc:
        convert(quiz_builder.root, tmp_path)
    assert len(exc.value.problems) == 2
    assert not (tmp_path / "out").exists()
    assert tree_digest(quiz_builder.root) == before


def test_interrupted_conversion_leaves_no_half_dataset(quiz_dir, tmp_path, monkeypatch):
    _, paths = convert(quiz_dir, tmp_path)  # a previous, complete conversion
    raw = paths["raw_dataset_dir"]
    previous = {p: p.read_bytes() for p in raw.rglob("*") if p.is_file()}
    calls = []
    real_convert_case = conversion._convert_case

    def failing_convert_case(case, out_dir):  # fault injection: the run dies on the 4th case
        calls.append(case.case_id)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_convert_case(case, out_dir)

    monkeypatch.setattr(conversion, "_convert_case", failing_convert_case)
    with pytest.raises(KeyboardInterrupt):
        convert(quiz_dir, tmp_path)
    assert {p: p.read_bytes() for p in raw.rglob("*") if p.is_file()} == previous
    assert sorted(p.name for p in raw.parent.iterdir()) == [NAME]
    assert sorted(p.name for p in paths["splits_json"].parent.iterdir()) == [
        "case_table.csv",
        "nnUNet_raw",
        "splits_final.json",
    ]


def test_rerun_replaces_a_previous_conversion(quiz_builder, tmp_path):
    quiz_builder.standard(n_train=1, n_validation=1, n_test=1)
    _, paths = convert(quiz_builder.root, tmp_path)
    quiz_builder.add_case("train", 2, number=80)
    summary, _ = convert(quiz_builder.root, tmp_path)
    assert summary["cases"]["train"] == 4
    assert (paths["raw_dataset_dir"] / "labelsTr" / "quiz_2_080.nii.gz").is_file()
    assert "quiz_2_080" in json.loads(paths["splits_json"].read_text())[0]["train"]
    assert sorted(p.name for p in paths["raw_dataset_dir"].parent.iterdir()) == [NAME]


def test_refuses_to_replace_a_folder_that_is_not_a_conversion(quiz_dir, tmp_path, tree_digest):
    raw = outputs(tmp_path)["raw_dataset_dir"]
    raw.mkdir(parents=True)
    (raw / "my_notes.txt").write_text("precious")
    before = tree_digest(raw.parent)
    with pytest.raises(UserInputError, match="my_notes.txt"):
        convert(quiz_dir, tmp_path)
    assert tree_digest(raw.parent) == before
    assert not outputs(tmp_path)["splits_json"].exists()


def test_refuses_outputs_inside_the_quiz_folder(quiz_dir, tmp_path, tree_digest):
    before = tree_digest(quiz_dir)
    with pytest.raises(UserInputError, match="quiz folder"):
        convert_quiz_to_nnunet(quiz_dir, quiz_dir / NAME, tmp_path / "s.json", tmp_path / "c.csv")
    with pytest.raises(UserInputError, match="inside the quiz folder"):
        convert_quiz_to_nnunet(quiz_dir, tmp_path / NAME, quiz_dir / "splits_final.json", tmp_path / "c.csv")
    assert tree_digest(quiz_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quiz"]


def test_rejects_a_bad_dataset_name(quiz_dir, tmp_path):
    with pytest.raises(UserInputError, match="not an nnU-Net dataset name"):
        convert(quiz_dir, tmp_path, dataset_name="PancreasQuiz")
    assert not (tmp_path / "out").exists()


# -- nnU-Net accepts the result ------------------------------------------------------------------------------


def test_nnunet_verify_dataset_integrity_accepts_the_dataset(converted, capsys):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(converted.raw_dataset_dir), num_processes=1)
    out = capsys.readouterr().out
    assert "verify_dataset_integrity Done" in out
    assert "Error" not in out and "Warning" not in out


# -- the Snakemake script ------------------------------------------------------------------------------------


def _run_script(quiz_dir: Path, tmp_path: Path, threads: int = 1) -> Path:
    paths = outputs(tmp_path)
    log_file = tmp_path / "logs" / "convert.log"
    smk = SimpleNamespace(
        params=SimpleNamespace(
            quiz_dir=str(quiz_dir),
            split_scheme="official",
            k=5,
            split_seed=12345,
            selection_fraction=0.15,
            labels="softmax",
        ),
        wildcards=SimpleNamespace(dataset=NAME),
        output=SimpleNamespace(
            raw_dataset=str(paths["raw_dataset_dir"]),
            splits=str(paths["splits_json"]),
            case_table=str(paths["case_table_csv"]),
        ),
        threads=threads,
        log=[str(log_file)],
    )
    _run_rule_script("convert_quiz_to_nnunet.py", smk)
    return log_file


def _run_rule_script(name: str, smk: SimpleNamespace) -> None:
    """Run a rule script as Snakemake does, then give the root logger back the handlers and level it had."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        runpy.run_path(str(REPO / "workflow" / "scripts" / name), init_globals={"snakemake": smk}, run_name="__main__")
    finally:
        for h in root.handlers:
            if h not in saved[0]:
                h.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_snakemake_script_converts(quiz_dir, tmp_path):
    log_file = _run_script(quiz_dir, tmp_path, threads=2)
    assert (outputs(tmp_path)["raw_dataset_dir"] / "dataset.json").is_file()
    assert outputs(tmp_path)["case_table_csv"].is_file()
    assert "converted 9/9 case(s)" in log_file.read_text()


def test_snakemake_script_reports_every_problem_without_traceback(quiz_builder, tmp_path):
    quiz_builder.standard(n_train=1, n_validation=1, n_test=1)
    quiz_builder.add_case("train", 0, number=90, mask=False)
    quiz_builder.add_case("validation", 1, number=91, image=False)
    with pytest.raises(SystemExit) as exc:
        _run_script(quiz_builder.root, tmp_path)
    assert exc.value.code == 1
    text = (tmp_path / "logs" / "convert.log").read_text()
    assert "train/subtype0/quiz_0_090_0000.nii.gz: image without mask" in text
    assert "validation/subtype1/quiz_1_091.nii.gz: mask without image" in text
    assert "Traceback" not in text
    assert not (tmp_path / "out").exists()


# -- the real sample (opt-in) ----------------------------------------------------------------------------------


@pytest.mark.real_sample
def test_real_sample_converts_with_exact_geometry(real_sample_quiz_dir, tmp_path, tree_digest):
    """Real files, symlinked into a quiz layout by the ``real_sample_quiz_dir`` test construction."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    before = tree_digest(real_sample_quiz_dir)
    summary, paths = convert(real_sample_quiz_dir, tmp_path, n_workers=2)
    assert tree_digest(real_sample_quiz_dir) == before
    assert summary["cases"] == {"train": 3, "validation": 3}
    raw = paths["raw_dataset_dir"]
    src_mask = nib.load(str(real_sample_quiz_dir / "train" / "subtype0" / "quiz_0_324.nii.gz"))
    for case_id in ("quiz_0_324", "quiz_0_999"):
        image_path, label_path = raw / "imagesTr" / f"{case_id}_0000.nii.gz", raw / "labelsTr" / f"{case_id}.nii.gz"
        img, lab = nib.load(str(image_path)), nib.load(str(label_path))
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        assert lab.shape == img.shape == (187, 95, 49)
        assert np.array_equal(lab.affine, img.affine)
        assert_same_grid_sitk(image_path, label_path)
        data = np.asanyarray(lab.dataobj)
        np.testing.assert_array_equal(data, np.rint(np.asanyarray(src_mask.dataobj)).astype(np.uint8))
    test_summary, test_paths = convert_tests(real_sample_quiz_dir, tmp_path, n_workers=2)
    assert test_summary["cases"] == {"test": 5}
    for src in sorted((real_sample_quiz_dir / "test").iterdir()):
        assert (test_paths["images_dir"] / src.name).read_bytes() == src.read_bytes()
    verify_dataset_integrity(str(raw), num_processes=1)


def test_kfold_splits_hold_out_the_official_validation_and_cover_training_once(quiz_dir):
    from pancreas_mtl.data.quiz_layout import discover_quiz_cases

    cases, problems = discover_quiz_cases(quiz_dir)
    assert not problems
    folds = make_splits(cases, "kfold", k=2, seed=12345)
    train = sorted(c.case_id for c in cases if c.split == "train")
    official_val = {c.case_id for c in cases if c.split == "validation"}
    assert len(folds) == 2
    assert sorted(folds[0]["val"] + folds[1]["val"]) == train
    for fold in folds:
        assert sorted(fold["train"] + fold["val"]) == train
        assert not (set(fold["train"]) | set(fold["val"])) & official_val
        # stratified: every subtype in both halves of each fold
        assert {int(c.split("_")[1]) for c in fold["val"]} == {0, 1, 2}
    assert make_splits(cases, "kfold", k=2, seed=12345) == folds  # seeded
    with pytest.raises(UserInputError, match="2 <= k"):
        make_splits(cases, "kfold", k=len(train) + 1, seed=12345)


def test_official_split_holds_out_stratified_selection_cases_and_never_the_validation(quiz_builder):
    """Defect: fold 0 validated (selected checkpoints) on the official validation cases that are reported."""
    from pancreas_mtl.data.quiz_layout import discover_quiz_cases

    quiz_dir = quiz_builder.standard(n_train=4, n_validation=1, n_test=1)
    cases, problems = discover_quiz_cases(quiz_dir)
    assert not problems
    train = sorted(c.case_id for c in cases if c.split == "train")
    official_val = {c.case_id for c in cases if c.split == "validation"}
    (fold,) = make_splits(cases, "official", seed=12345, selection_fraction=0.25)
    assert sorted(fold["train"] + fold["val"]) == train
    assert not set(fold["val"]) & official_val and not set(fold["train"]) & official_val
    # one of each subtype's four training cases (round(0.25 * 4)), seeded
    assert sorted(int(c.split("_")[1]) for c in fold["val"]) == [0, 1, 2]
    assert make_splits(cases, "official", seed=12345, selection_fraction=0.25) == [fold]
    assert make_splits(cases, "official", seed=1, selection_fraction=0.5)[0]["val"] != fold["val"]
    with pytest.raises(ValueError, match="split_seed"):
        make_splits(cases, "official", selection_fraction=0.25)


def test_without_cases_to_hold_out_fold_0_trains_and_validates_on_all_training_cases(quiz_builder):
    """One training case per subtype: nothing can be held out, and nnU-Net needs validation cases (an empty list
    crashed its data loader); fold 0 is nnU-Net's fold "all", never the official validation cases."""
    from pancreas_mtl.data.quiz_layout import discover_quiz_cases

    cases, _ = discover_quiz_cases(quiz_builder.standard(n_train=1, n_validation=1, n_test=1))
    (fold,) = make_splits(cases, "official", seed=12345, selection_fraction=0.15)
    train = sorted(c.case_id for c in cases if c.split == "train")
    assert fold == {"train": train, "val": train}


def test_a_selection_fraction_of_zero_holds_nothing_out(quiz_builder):
    """Trainers compared on the same training cases: every case trains, fold 0 is nnU-Net's fold "all"."""
    from pancreas_mtl.data.quiz_layout import discover_quiz_cases

    cases, _ = discover_quiz_cases(quiz_builder.standard(n_train=4, n_validation=1, n_test=1))
    (fold,) = make_splits(cases, "official", seed=12345, selection_fraction=0)
    train = sorted(c.case_id for c in cases if c.split == "train")
    assert fold == {"train": train, "val": train}
    with pytest.raises(UserInputError, match=r"selection_fraction must be in \[0, 0.5\], got -0.1"):
        make_splits(cases, "official", seed=12345, selection_fraction=-0.1)


# -- the test images, converted on their own ------------------------------------------------------------------


def test_each_conversion_reads_only_its_own_part_of_the_quiz_folder(quiz_builder, tmp_path):
    """A broken test image fails the test images' conversion only; a broken labelled case the labelled one only."""
    quiz_builder.standard(n_train=1, n_validation=1, n_test=1)
    quiz_builder.truncate(quiz_builder.add_test(number=60).image)
    summary, _ = convert(quiz_builder.root, tmp_path / "a")
    assert summary["cases"] == {"train": 3, "validation": 3}
    with pytest.raises(QuizDataError) as exc:
        convert_tests(quiz_builder.root, tmp_path / "a")
    assert [p for p in exc.value.problems if p.startswith("test/quiz_060_0000.nii.gz")], exc.value.problems
    assert not test_outputs(tmp_path / "a")["images_dir"].exists()

    (quiz_builder.root / "test" / "quiz_060_0000.nii.gz").unlink()
    quiz_builder.truncate(quiz_builder.add_case("train", 1, number=61).mask)
    assert convert_tests(quiz_builder.root, tmp_path / "b")[0]["cases"] == {"test": 1}
    with pytest.raises(QuizDataError, match="train/subtype1/quiz_1_061.nii.gz"):
        convert(quiz_builder.root, tmp_path / "b")


def test_a_stray_nifti_file_fails_both_conversions(quiz_builder, tmp_path):
    quiz_builder.standard(n_train=1, n_validation=1, n_test=1)
    (quiz_builder.root / "extra").mkdir()
    (quiz_builder.root / "extra" / "quiz_0_070.nii.gz").write_bytes(b"")
    for run in (convert, convert_tests):
        with pytest.raises(QuizDataError, match="extra/quiz_0_070.nii.gz: NIfTI file outside the expected layout"):
            run(quiz_builder.root, tmp_path)


def test_test_images_rerun_replaces_the_previous_ones(quiz_builder, tmp_path):
    quiz_builder.standard(n_train=1, n_validation=1, n_test=2)
    _, paths = convert_tests(quiz_builder.root, tmp_path)
    removed = sorted((quiz_builder.root / "test").iterdir())[0]
    removed.unlink()
    quiz_builder.add_test(number=88)
    summary, _ = convert_tests(quiz_builder.root, tmp_path)
    names = sorted(p.name for p in paths["images_dir"].iterdir())
    assert summary["cases"] == {"test": 2} and "quiz_088_0000.nii.gz" in names and removed.name not in names
    assert sorted(read_case_table(paths["test_table_csv"])["image"]) == names
    assert sorted(p.name for p in paths["images_dir"].parent.iterdir()) == ["test_cases.csv", "test_images"]


def test_test_images_refuse_a_folder_that_is_not_theirs(quiz_dir, tmp_path, tree_digest):
    images = test_outputs(tmp_path)["images_dir"]
    images.mkdir(parents=True)
    (images / "my_notes.txt").write_text("precious")
    before = tree_digest(images.parent)
    with pytest.raises(UserInputError, match="my_notes.txt"):
        convert_tests(quiz_dir, tmp_path)
    assert tree_digest(images.parent) == before
    with pytest.raises(UserInputError, match="overlaps the quiz folder"):
        convert_test_images(quiz_dir, quiz_dir / "test", tmp_path / "t.csv")


def test_a_test_image_stored_as_4d_is_copied_as_3d(quiz_builder, tmp_path):
    quiz_builder.standard(n_train=1, n_validation=1, n_test=1)
    case = quiz_builder.add_test(number=77)
    img = nib.load(str(case.image))
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[..., None], img.affine), str(case.image))
    _, paths = convert_tests(quiz_builder.root, tmp_path)
    out = nib.load(str(paths["images_dir"] / "quiz_077_0000.nii.gz"))
    assert out.shape == img.shape
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), np.asanyarray(img.dataobj))


def test_snakemake_script_converts_the_test_images(quiz_dir, tmp_path):
    paths = test_outputs(tmp_path)
    smk = SimpleNamespace(
        params=SimpleNamespace(quiz_dir=str(quiz_dir)),
        output=SimpleNamespace(images=str(paths["images_dir"]), test_cases=str(paths["test_table_csv"])),
        threads=2,
        log=[str(tmp_path / "logs" / "convert_test_images.log")],
    )
    _run_rule_script("convert_test_images.py", smk)
    assert len(read_case_table(paths["test_table_csv"])) == 2
    assert "copying 2 test image(s)" in (tmp_path / "logs" / "convert_test_images.log").read_text()


def test_a_plain_segmentation_set_converts_without_subtypes(quiz_builder, tmp_path):
    """Pairs directly in train/ and validation/ (no subtype folders): converted as any case, labels rounded, with an
    empty subtype in the case table; the selection split is drawn over all training cases."""
    root = quiz_builder.standard(n_train=2, n_validation=1, n_test=0)
    for split in ("train", "validation"):
        for subtype_folder in sorted((root / split).iterdir()):
            for f in subtype_folder.iterdir():
                f.rename(root / split / f.name.replace("quiz_", "scan-"))
            subtype_folder.rmdir()
    summary, paths = convert(root, tmp_path, allow_partial=True, split_seed=3, selection_fraction=0.34)
    assert summary["cases"] == {"train": 6, "validation": 3}
    table = read_case_table(paths["case_table_csv"])
    assert table["subtype"].isna().all() and table["case_id"].str.startswith("scan-").all()
    splits = json.loads(Path(paths["splits_json"]).read_text())
    assert len(splits) == 1 and len(splits[0]["val"]) == 2 and len(splits[0]["train"]) == 4
    assert not set(splits[0]["val"]) & set(table.loc[table["split"] == "validation", "case_id"])
    for case_id in table["case_id"]:
        labels = np.asarray(nib.load(Path(paths["raw_dataset_dir"]) / "labelsTr" / f"{case_id}.nii.gz").dataobj)
        assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2}
