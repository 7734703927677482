"""The synthetic quiz: real files written to tmp_path and read back with nibabel (no mocks)."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pancreas_mtl.data.synthetic import (
    DEFAULT_COUNTS,
    HARD_MIN_LESION_VOXELS,
    HARD_SHARE_MEDIAN,
    HARD_SHARE_Q10,
    HARD_SHARE_Q90,
    PANCREAS_QUIRK_VALUE,
    SyntheticQuizError,
    make_synthetic_quiz,
    normalize_counts,
    resolve_subtype,
    synthesize_case,
)

REPO = Path(__file__).resolve().parents[2]
SMALL = {"train": (2, 2, 2), "validation": (1, 1, 1), "test": 2}
SEED = 3
LABELLED = re.compile(r"^quiz_(\d)_(\d{3})(_0000)?\.nii\.gz$")
TEST_IMAGE = re.compile(r"^quiz_(\d{3})_0000\.nii\.gz$")


@pytest.fixture(scope="module")
def small_quiz(tmp_path_factory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("synthetic") / "quiz"
    files = make_synthetic_quiz(out, seed=SEED, counts=SMALL)
    return out, files


def _load(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    img = nib.load(path)
    return img, np.asarray(img.dataobj)


def _labels(mask_data: np.ndarray) -> np.ndarray:
    return np.round(mask_data).astype(np.int64)


def _relative_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- layout


def test_layout_and_file_names(small_quiz):
    out, files = small_quiz
    assert sorted(files) == files
    assert {p.relative_to(out).as_posix() for p in files} == _relative_files(out)
    assert sorted(p.name for p in out.iterdir()) == ["test", "train", "validation"]
    for split in ("train", "validation"):
        assert sorted(p.name for p in (out / split).iterdir()) == ["subtype0", "subtype1", "subtype2"]

    numbers = []
    for split, per_subtype in (("train", SMALL["train"]), ("validation", SMALL["validation"])):
        for s, n in enumerate(per_subtype):
            names = sorted(p.name for p in (out / split / f"subtype{s}").iterdir())
            assert len(names) == 2 * n
            images = [x for x in names if x.endswith("_0000.nii.gz")]
            assert len(images) == n
            for image in images:
                m = LABELLED.match(image)
                assert m and int(m.group(1)) == s, image
                assert image.replace("_0000.nii.gz", ".nii.gz") in names  # its mask
                numbers.append(m.group(2))
    test_names = sorted(p.name for p in (out / "test").iterdir())
    assert len(test_names) == SMALL["test"]
    for name in test_names:
        m = TEST_IMAGE.match(name)
        assert m, name
        numbers.append(m.group(1))
    assert len(numbers) == len(set(numbers)) == 11  # unique across the whole dataset
    assert not [p for p in out.parent.iterdir() if p.name != "quiz"]  # no temporary folder left


def test_default_counts_keep_the_real_class_ratios():
    real = {"train": (62, 106, 84), "validation": (9, 15, 12)}
    for split, real_counts in real.items():
        ours = np.asarray(DEFAULT_COUNTS[split], float)
        assert np.allclose(ours / ours.sum(), np.asarray(real_counts) / sum(real_counts), atol=0.03)
    assert normalize_counts(None) == {"train": (12, 20, 16), "validation": (4, 6, 5), "test": 12}
    # Snakemake hands lists over from the YAML config
    assert normalize_counts({"train": [1, 2, 3], "validation": [0, 0, 1], "test": 4})["train"] == (1, 2, 3)


@pytest.mark.parametrize(
    "counts, fragment",
    [
        ({"train": (1, 1), "validation": (1, 1, 1), "test": 1}, "train must be three"),
        ({"train": (1, 1, 1), "validation": (1, -1, 1), "test": 1}, "validation must be three"),
        ({"train": (1, 1, 1), "validation": (1, 1, 1)}, "missing key 'test'"),
        ({"train": (1, 1, 1), "validation": (1, 1, 1), "test": 1, "val": 2}, "unknown key 'val'"),
        ({"train": (0, 0, 0), "validation": (0, 0, 0), "test": 0}, "no cases"),
        ({"train": (400, 400, 400), "validation": (0, 0, 0), "test": 0}, "at most 1000"),
    ],
)
def test_invalid_counts_are_refused(tmp_path, counts, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        make_synthetic_quiz(tmp_path / "quiz", counts=counts)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_also_in_parallel(small_quiz, tmp_path):
    out, files = small_quiz
    again = make_synthetic_quiz(tmp_path / "quiz", seed=SEED, counts=SMALL, n_workers=2)
    assert [p.relative_to(tmp_path / "quiz") for p in again] == [p.relative_to(out) for p in files]
    for a, b in zip(files, again):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_a_case_depends_only_on_seed_and_case_id(small_quiz):
    out, _ = small_quiz
    path = sorted((out / "train" / "subtype1").glob("*_0000.nii.gz"))[0]
    case_id = path.name[: -len("_0000.nii.gz")]
    image, mask = synthesize_case(case_id, 1, SEED)
    on_disk, data = _load(path)
    assert np.array_equal(np.asarray(image.dataobj), data)
    assert np.array_equal(image.affine, on_disk.affine)
    assert np.array_equal(np.asarray(mask.dataobj), _load(out / "train" / "subtype1" / f"{case_id}.nii.gz")[1])


def test_different_seed_or_case_differs():
    a = np.asarray(synthesize_case("quiz_2_123", 2, 0)[0].dataobj)
    b = np.asarray(synthesize_case("quiz_2_123", 2, 1)[0].dataobj)
    c = np.asarray(synthesize_case("quiz_2_124", 2, 0)[0].dataobj)
    assert a.shape != b.shape or not np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_hidden_test_subtype_is_reproducible_and_mixed():
    drawn = [resolve_subtype(f"quiz_{n:03d}", None, 0) for n in range(60)]
    assert drawn == [resolve_subtype(f"quiz_{n:03d}", None, 0) for n in range(60)]
    assert set(drawn) == {0, 1, 2}
    with pytest.raises(ValueError, match="names subtype 1"):
        resolve_subtype("quiz_1_005", 2, 0)
    with pytest.raises(ValueError, match="must be 0, 1, 2"):
        resolve_subtype("quiz_1_005", 3, 0)
    with pytest.raises(ValueError, match="not of the form"):
        synthesize_case("case_7", 0, 0)


# --------------------------------------------------------------------------- file quirks


@pytest.fixture(scope="module")
def many_cases():
    """A dozen cases built in memory, round-tripped through real .nii.gz files."""
    cases = []
    for n in range(12):
        s = n % 3
        cases.append((s, *synthesize_case(f"quiz_{s}_{n:03d}", s, 0)))
    return cases


def test_image_dtypes_mix_int16_int32_float64(many_cases, small_quiz, tmp_path):
    dtypes = set()
    for i, (_, image, _) in enumerate(many_cases):
        nib.save(image, tmp_path / f"img{i}.nii.gz")
        img, data = _load(tmp_path / f"img{i}.nii.gz")
        assert img.get_data_dtype() == data.dtype == np.asarray(image.dataobj).dtype
        dtypes.add(np.dtype(data.dtype).name)
    assert dtypes == {"int16", "int32", "float64"}
    out, files = small_quiz
    for path in files:
        if path.name.endswith("_0000.nii.gz"):
            assert np.dtype(nib.load(path).get_data_dtype()).name in {"int16", "int32", "float64"}


def test_masks_are_float_with_the_pancreas_quirk_in_some_cases(many_cases, small_quiz, tmp_path):
    quirky = []
    for i, (_, _, mask) in enumerate(many_cases):
        nib.save(mask, tmp_path / f"mask{i}.nii.gz")
        img, data = _load(tmp_path / f"mask{i}.nii.gz")
        assert np.dtype(data.dtype).name in {"float32", "float64"}
        values = set(np.unique(data).astype(np.float64).tolist())
        assert values in ({0.0, 1.0, 2.0}, {0.0, PANCREAS_QUIRK_VALUE, 2.0})
        assert set(np.unique(_labels(data)).tolist()) == {0, 1, 2}
        quirky.append(PANCREAS_QUIRK_VALUE in values)
    assert 0 < sum(quirky) < len(quirky)
    assert PANCREAS_QUIRK_VALUE == 1.0000152587890625 == float(np.float32(PANCREAS_QUIRK_VALUE))
    out, files = small_quiz
    masks = [p for p in files if not p.name.endswith("_0000.nii.gz")]
    assert len(masks) == 9
    for path in masks:
        img, data = _load(path)
        assert np.dtype(img.get_data_dtype()).name in {"float32", "float64"}
        assert set(np.unique(_labels(data)).tolist()) == {0, 1, 2}


def test_geometry_lps_anisotropic_and_shared_by_image_and_mask(small_quiz):
    out, files = small_quiz
    z_spacings = set()
    for path in files:
        img = nib.load(path)
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        assert np.allclose(img.get_qform(), img.affine, atol=1e-4)
        sx, sy, sz = (float(v) for v in img.header.get_zooms())
        assert sx == sy and 0.6 <= sx <= 0.9
        assert 1.0 <= sz <= 5.0
        assert np.allclose(np.diag(img.affine)[:3], [-sx, -sy, sz])
        # fixed physical field of view (48 x 48 x 96 mm), sampled at the case's spacing
        assert np.allclose(np.asarray(img.shape) * [sx, sy, sz], [48, 48, 96], atol=[sx, sy, sz])
        z_spacings.add(sz)
        if not path.name.endswith("_0000.nii.gz"):
            image = nib.load(path.with_name(path.name.replace(".nii.gz", "_0000.nii.gz")))
            assert image.shape == img.shape
            assert np.array_equal(image.affine, img.affine)
    assert len(z_spacings) > 1  # spacing varies per case


def test_intensities_look_like_ct(many_cases):
    for subtype, image, mask in many_cases:
        data = np.asarray(image.dataobj).astype(np.float64)
        labels = _labels(np.asarray(mask.dataobj))
        assert -1024 <= data.min() and data.max() <= 3071
        assert np.array_equal(data, np.round(data))  # whole Hounsfield units, as scanners write
        background = data[labels == 0]
        assert -60 < np.median(background) < 80  # soft tissue with some fat
        assert (background < -50).mean() > 0.03  # fat
        assert 70 < data[labels == 1].mean() < 120  # contrast-enhanced pancreas
        noise = np.std(np.diff(data[labels == 0].reshape(-1)[:2000]))
        assert noise > 5  # not a cartoon


def test_one_connected_lesion_inside_the_pancreas(many_cases, small_quiz):
    out, files = small_quiz
    masks = [np.asarray(m.dataobj) for _, _, m in many_cases]
    masks += [_load(p)[1] for p in files if not p.name.endswith("_0000.nii.gz")]
    for data in masks:
        labels = _labels(data)
        lesion = labels == 2
        _, n = ndimage.label(lesion, structure=np.ones((3, 3, 3)))
        assert n == 1
        assert lesion.sum() > 30
        shell = ndimage.binary_dilation(lesion) & ~lesion
        assert (labels[shell] == 1).mean() > 0.4  # mostly wrapped in pancreas
        assert not lesion[[0, -1]].any() and not lesion[:, [0, -1]].any() and not lesion[:, :, [0, -1]].any()
        _, n_pancreas = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
        assert n_pancreas == 1


def test_subtypes_are_separable_by_lesion_appearance():
    """Subtype 0 is dark; 1 is bright to its centre and speckled; 2 has a dark core in a bright rim."""
    means, cores, stds = ({0: [], 1: [], 2: []} for _ in range(3))
    for seed in (0, 1, 2):
        for s in (0, 1, 2):
            image, mask = synthesize_case(f"quiz_{s}_{40 + seed:03d}", s, seed)
            data = np.asarray(image.dataobj).astype(np.float64)
            lesion = _labels(np.asarray(mask.dataobj)) == 2
            depth = ndimage.distance_transform_edt(lesion, sampling=image.header.get_zooms())
            core = lesion & (depth >= np.percentile(depth[lesion], 80))
            means[s].append(data[lesion].mean())
            cores[s].append(data[core].mean())
            stds[s].append(data[lesion].std())
    assert max(means[0]) < 50 < 100 < min(means[1] + means[2])  # hypodense cyst vs enhancing lesions
    assert max(cores[2]) + 40 < min(cores[1])  # dark core vs bright centre
    assert min(cores[1]) > 150
    assert np.mean(stds[0]) + 5 < np.mean(stds[1])  # speckled vs homogeneous
    assert np.ptp(means[1]) > 3 and np.ptp(means[2]) > 3  # per-case variation, not one constant


# --------------------------------------------------------------------------- the hard preset

N_HARD = 30  # 10 cases per subtype


@pytest.fixture(scope="module")
def hard_cases():
    """``N_HARD`` labelled cases of the hard preset, in memory: (subtype, lesion share, labels, image)."""
    cases = []
    for n in range(N_HARD):
        s = n % 3
        image, mask = synthesize_case(f"quiz_{s}_{n:03d}", s, 0, preset="hard")
        labels = _labels(np.asarray(mask.dataobj))
        n_lesion, n_pancreas = int((labels == 2).sum()), int((labels == 1).sum())
        cases.append((s, n_lesion / (n_lesion + n_pancreas), labels, np.asarray(image.dataobj).astype(float)))
    return cases


def test_hard_preset_lesion_shares_span_the_real_range(hard_cases):
    """Lesion / (pancreas + lesion) as in the real data: median ~10 %, 10th-90th percentile ~1.3-43 %.

    The bands are wide enough for the sampling error of 30 cases (a 99 % band for the median of a
    log-normal with the real quantiles is about 4-20 %), not fitted to this seed's values.
    """
    shares = np.array([share for _, share, _, _ in hard_cases])
    q10, median, q90 = np.percentile(shares, [10, 50, 90])
    assert 0.35 * HARD_SHARE_MEDIAN < median < 2.0 * HARD_SHARE_MEDIAN
    assert q10 < 3 * HARD_SHARE_Q10  # small lesions, a few % of the labelled region
    assert q90 > 0.6 * HARD_SHARE_Q90  # and large ones
    assert shares.min() < 0.02 and shares.max() > 0.3
    assert shares.max() < 0.8  # the pancreas is always there


def test_hard_preset_lesions_are_whole_and_survive_sampling(hard_cases):
    for _, _, labels, _ in hard_cases:
        lesion = labels == 2
        _, n = ndimage.label(lesion, structure=np.ones((3, 3, 3)))
        assert n == 1
        assert lesion.sum() >= HARD_MIN_LESION_VOXELS
        assert set(np.unique(labels).tolist()) == {0, 1, 2}
        assert not lesion[[0, -1]].any() and not lesion[:, [0, -1]].any() and not lesion[:, :, [0, -1]].any()


def test_hard_preset_subtype_cues_overlap(hard_cases):
    """Unlike the demo preset, no subtype is told from the others by the lesion's density alone, and
    the subtypes' density ranges overlap pairwise."""
    means = {s: [image[labels == 2].mean() for t, _, labels, image in hard_cases if t == s] for s in (0, 1, 2)}
    for s in (0, 1, 2):
        others = [m for t in (0, 1, 2) if t != s for m in means[t]]
        assert min(means[s]) < max(others) and max(means[s]) > min(others), s
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert max(min(means[a]), min(means[b])) < min(max(means[a]), max(means[b])), (a, b)
    # still informative on average: the hypodense subtype 0 is darker than the hyperdense subtype 1
    assert np.median(means[0]) < np.median(means[1])


def test_hard_preset_is_deterministic_and_differs_from_demo():
    a_image, a_mask = synthesize_case("quiz_2_017", 2, 4, preset="hard")
    b_image, b_mask = synthesize_case("quiz_2_017", 2, 4, preset="hard")
    assert np.array_equal(np.asarray(a_image.dataobj), np.asarray(b_image.dataobj))
    assert np.array_equal(np.asarray(a_mask.dataobj), np.asarray(b_mask.dataobj))
    demo_image, demo_mask = synthesize_case("quiz_2_017", 2, 4)
    explicit_image, explicit_mask = synthesize_case("quiz_2_017", 2, 4, preset="demo")
    assert np.array_equal(np.asarray(demo_image.dataobj), np.asarray(explicit_image.dataobj))
    assert np.array_equal(np.asarray(demo_mask.dataobj), np.asarray(explicit_mask.dataobj))
    assert demo_image.shape == a_image.shape  # the spacing is drawn first, the same in both presets
    assert not np.array_equal(np.asarray(demo_mask.dataobj), np.asarray(a_mask.dataobj))


def test_make_synthetic_quiz_writes_the_hard_preset(tmp_path, caplog):
    counts = {"train": (1, 1, 1), "validation": (0, 0, 0), "test": 1}
    with caplog.at_level(logging.INFO, logger="pancreas_mtl.data.synthetic"):
        files = make_synthetic_quiz(tmp_path / "quiz", seed=2, counts=counts, preset="hard")
    assert len(files) == 7
    assert "preset hard" in caplog.text
    for path in files:
        if not path.name.endswith("_0000.nii.gz"):  # a mask: written exactly as synthesize_case makes it
            case_id = path.name[: -len(".nii.gz")]
            _, mask = synthesize_case(case_id, int(case_id.split("_")[1]), 2, preset="hard")
            assert np.array_equal(_load(path)[1], np.asarray(mask.dataobj))


@pytest.mark.parametrize("preset", ["extreme", "Hard", "", None, 1])
def test_a_bad_preset_is_refused(tmp_path, preset):
    with pytest.raises(SyntheticQuizError, match=r"preset must be one of 'demo', 'hard'"):
        make_synthetic_quiz(tmp_path / "quiz", counts=SMALL, preset=preset)
    assert not list(tmp_path.iterdir())
    with pytest.raises(SyntheticQuizError, match="preset"):
        synthesize_case("quiz_0_001", 0, 0, preset=preset)


# --------------------------------------------------------------------------- refusing and failing safely


def test_refuses_non_empty_out_dir(tmp_path):
    out = tmp_path / "quiz"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not empty"):
        make_synthetic_quiz(out, counts=SMALL)
    assert _relative_files(out) == {"keep.txt"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quiz"]

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        make_synthetic_quiz(afile, counts=SMALL)


def test_fills_an_existing_empty_folder_and_logs_progress(tmp_path, caplog):
    out = tmp_path / "quiz"
    out.mkdir()
    counts = {"train": (4, 4, 3), "validation": (0, 0, 0), "test": 0}
    with caplog.at_level(logging.INFO, logger="pancreas_mtl.data.synthetic"):
        files = make_synthetic_quiz(out, seed=1, counts=counts)
    assert len(files) == 22 and all(p.is_file() for p in files)
    messages = [r.getMessage() for r in caplog.records if r.name == "pancreas_mtl.data.synthetic"]
    assert "generated 10/11 cases" in messages and "generated 11/11 cases" in messages


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("n_workers", [1, 2])
def test_no_partial_out_dir_when_writing_fails(tmp_path, n_workers):
    """A real write failure: a 20 kB file-size limit (as a full disk or quota would) stops the first image."""
    pytest.importorskip("resource")
    parent = tmp_path / "results"
    code = f"""
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
        from pancreas_mtl.data.synthetic import make_synthetic_quiz
        make_synthetic_quiz({str(parent / "quiz")!r}, counts={SMALL!r}, n_workers={n_workers})
    """
    result = _run_python(code, tmp_path)
    assert result.returncode != 0
    assert "File too large" in result.stderr, result.stderr[-2000:]
    assert not (parent / "quiz").exists()
    assert list(parent.iterdir()) == []  # the temporary sibling is gone too


@pytest.mark.parametrize(
    "config, params, preset",
    [
        (None, {}, "demo"),  # no synthetic.preset anywhere: the default
        ({"synthetic": {"seed": 5, "preset": "hard"}}, {}, "hard"),  # from snakemake.config
        ({"synthetic": {"preset": "demo"}}, {"preset": "hard"}, "hard"),  # a rule param wins
    ],
)
def test_snakemake_script_writes_the_quiz(tmp_path, config, params, preset):
    """The thin rule script, run as Snakemake would run it (a ``snakemake`` global)."""
    script = REPO / "workflow" / "scripts" / "make_synthetic_quiz.py"
    out, log = tmp_path / "quiz", tmp_path / "logs" / "make.log"
    counts = {"train": [1, 1, 1], "validation": [0, 1, 0], "test": 1}
    extra = "" if config is None else f"config={config!r},"
    code = f"""
        import runpy, types
        smk = types.SimpleNamespace(
            output=types.SimpleNamespace(quiz_dir={str(out)!r}),
            params=types.SimpleNamespace(seed=5, counts={json.dumps(counts)}, **{params!r}),
            threads=2,
            log=[{str(log)!r}],
            {extra}
        )
        runpy.run_path({str(script)!r}, init_globals={{"snakemake": smk}})
    """
    result = _run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list(out.rglob("*.nii.gz"))) == 2 * 4 + 1
    text = log.read_text()
    assert "generated 5/5 cases" in text
    assert f"seed 5, preset {preset})" in text
