"""What reruns after a change to a finished run: dry runs (``snakemake -n``) on one finished run from a quiz folder.

The run reads a quiz folder (``data.source: folder``), as a user's real data is read: the synthetic source makes the
quiz folder one directory input of the conversion, so it cannot show a single test image's effect. It leaves out the
timed inference benchmark and the report plots drawn from it (``--omit-from benchmark_inference``): the benchmark
alone takes three minutes, and both only read what the predictions read. Each test
changes one thing (a file of the quiz folder, one config key), asks Snakemake which jobs it would run, and puts the
change back. The expected job lists are docs/pipeline.md's table "What reruns when you change...", row by row: the tests
read them from there, so the table and the dry runs cannot disagree.
"""

import os
import re
import shutil
from contextlib import ExitStack, contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from pancreas_mtl.data.synthetic import make_synthetic_quiz
from tests.workflow_helpers import (
    ONE_EPOCH,
    REPO,
    TINY_CPU_CONFIGURATION,
    copy_workflow,
    run_snakemake,
    snakemake_output,
)

pytestmark = pytest.mark.slow

# The benchmark and the report plots that read it are left out of the run (see above).
OMITTED = ("--omit-from", "benchmark_inference")
OMITTED_RULES = {"benchmark_inference", "report_plots"}
TRAINING = {"train_stage1", "train_stage2"}
# The page whose table "What reruns when you change..." the tests check, row by row.
RERUN_TABLE_PAGE = REPO / "docs" / "pipeline.md"
TABLE_MARKER = "<!-- rerun table:"
# The tiny finished run: one fold, one epoch a stage, a quiz folder of 2+2+2 training, 1+1+1 validation and
# 2 test cases; the synthetic data is only its quiz folder's content.
RUN_CONFIG = {
    "data": {"source": "folder", "quiz_dir": "quiz"},
    "nnunet": {"cpu_configuration": TINY_CPU_CONFIGURATION},
    "training": {
        "device": "cpu",
        "split": "official",
        "folds": [0],
        "stage1": ONE_EPOCH,
        "stage2": {**ONE_EPOCH, "classification_warmup_epochs": 0},
    },
    "benchmark": {"max_cases": 1, "repeats": 1},
    "wandb": {"enabled": False},
    "resources": {"preprocess_threads": 2, "train_threads": 1, "predict_threads": 2},
}


def merged(base: dict, change: dict) -> dict:
    out = dict(base)
    for key, value in change.items():
        out[key] = merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """The whole workflow run once on a quiz folder; the tests only dry-run on it and put back what they change."""
    workdir = copy_workflow(tmp_path_factory.mktemp("reruns") / "workflow")
    make_synthetic_quiz(
        workdir / "quiz", seed=11, counts={"train": [2, 2, 2], "validation": [1, 1, 1], "test": 2}, n_workers=2
    )
    (workdir / "run.yaml").write_text(yaml.safe_dump(RUN_CONFIG))
    result = run_snakemake(
        workdir, "--cores", "2", "--configfile", "run.yaml", *OMITTED, "--show-failed-logs", timeout=900
    )
    if result.returncode != 0:
        pytest.fail(f"the finished run failed:\n{snakemake_output(result)[-6000:]}")
    assert planned_jobs(workdir) == {}, "the finished run is not up to date"
    return workdir


def planned_jobs(workdir: Path, change: dict | None = None) -> dict[str, int]:
    """The jobs a dry run schedules, by rule (``all`` left out), with the config changed by ``change``."""
    config = "run.yaml"
    if change:
        config = "changed.yaml"
        (workdir / config).write_text(yaml.safe_dump(merged(RUN_CONFIG, change)))
    result = run_snakemake(workdir, "-n", "--cores", "2", "--configfile", config, *OMITTED, timeout=120)
    output = snakemake_output(result)
    assert result.returncode == 0, output[-4000:]
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:", 1)[1]
    rows = re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE)
    jobs = {rule: int(count) for rule, count in rows if rule not in ("total", "count")}
    jobs.pop("all", None)
    return jobs


@contextmanager
def edited_mask(mask: Path):
    """A mask with one voxel relabelled, as a corrected mask would be, put back byte for byte and with its time.

    Touching the file is not a change: Snakemake compares the checksum it keeps of a small input file."""
    before, content = mask.stat(), mask.read_bytes()
    image = nib.load(mask)
    data = np.asanyarray(image.dataobj).copy()
    data.flat[0] = 1 if data.flat[0] == 0 else 0
    nib.save(nib.Nifti1Image(data, image.affine, image.header), mask)
    try:
        yield
    finally:
        mask.write_bytes(content)
        os.utime(mask, ns=(before.st_atime_ns, before.st_mtime_ns))


def readme_rerun_table() -> dict[str, set[str]]:
    """RERUN_TABLE_PAGE's table "What reruns when you change...": each row's change, and the rules its jobs run."""
    text = RERUN_TABLE_PAGE.read_text()
    assert TABLE_MARKER in text, f"{RERUN_TABLE_PAGE} has no rerun table"
    lines = text.split(TABLE_MARKER, 1)[1].splitlines()[1:]
    rows = {}
    for line in lines[2:]:  # after the header and the separator
        if not line.startswith("|"):
            break
        change, reruns = (cell.strip() for cell in line.strip("|").split("|"))
        rows[change] = set(re.findall(r"`([a-z0-9_]+)`", reruns))
    return rows


def with_config(change: dict):
    """A row's change made in the config (``planned_jobs`` writes it); nothing to put back."""

    @contextmanager
    def made(workdir):
        yield change

    return made


def added_test_image():
    @contextmanager
    def made(workdir):
        test_dir = workdir / "quiz" / "test"
        added = test_dir / "quiz_999_0000.nii.gz"
        shutil.copy2(sorted(test_dir.iterdir())[0], added)
        try:
            yield None
        finally:
            added.unlink()

    return made


def removed_test_image():
    @contextmanager
    def made(workdir):
        image = sorted((workdir / "quiz" / "test").iterdir())[0]
        parked = workdir / image.name
        image.rename(parked)
        try:
            yield None
        finally:
            parked.rename(image)

    return made


def edited_labelled_case(split: str):
    @contextmanager
    def made(workdir):
        with edited_mask(sorted((workdir / "quiz" / split).glob("subtype1/quiz_1_???.nii.gz"))[0]):
            yield None

    return made


SEGMENTATION_ROW = "`training.mode` to `segmentation` (stage 1 predicts; nothing trains)"
# Each table row's changes, made on the finished run (RUN_CONFIG) one at a time.
ROW_CHANGES = {
    "a test image (added, removed or replaced)": [added_test_image(), removed_test_image()],
    "a training case": [edited_labelled_case("train")],
    "a validation case (it sits in nnU-Net's `imagesTr`, so in its dataset fingerprint and plans)": [
        edited_labelled_case("validation")
    ],
    "`training.labels` (the conversion writes the regions into `dataset.json`)": [
        with_config({"training": {"labels": "regions"}})
    ],
    "`training.split`, `training.k`, `training.split_seed`, `training.selection_fraction` (the splits)": [
        with_config({"training": {"selection_fraction": 0.3}}),
        with_config({"training": {"split_seed": 7}}),
    ],
    "`nnunet.*`": [with_config({"nnunet": {"cpu_configuration": {"feature_divisor": 4}}})],
    "`training.stage1.*`, `training.seed`, `training.sampling_seed`": [
        with_config({"training": {"stage1": {"initial_lr": 0.002}}}),
        with_config({"training": {"seed": 1}}),
        with_config({"training": {"sampling_seed": 5}}),
    ],
    "`postprocessing.lesion_presence_prior.*` (the full validation that selects the checkpoints applies the prior)": [
        with_config({"postprocessing": {"lesion_presence_prior": {"relative_threshold": 0.3}}}),
        with_config({"postprocessing": {"lesion_presence_prior": {"enabled": False}}}),
    ],
    "`training.stage2.*`, `training.stage2_init`": [
        with_config({"training": {"stage2": {"initial_lr": 0.001}}}),
        with_config({"training": {"stage2_init": "final"}}),
    ],
    "`training.head` (a model folder of its own)": [with_config({"training": {"head": "global_pool"}})],
    "`training.inference_checkpoint`, `inference.*`": [
        with_config({"training": {"inference_checkpoint": "best_f1"}}),
        with_config({"inference": {"tile_step_size": 0.75}}),
        with_config({"inference": {"mirror_axes": [0]}}),
    ],
    SEGMENTATION_ROW: [with_config({"training": {"mode": "segmentation"}})],
    "`evaluation.*`": [with_config({"evaluation": {"nsd_tolerance_mm": 1.0}})],
    "`benchmark.*`": [with_config({"benchmark": {"repeats": 2, "max_cases": 2}})],
    "`wandb.*`, `resources.*`, `training.device`, `training.data_augmentation_workers` (how a run runs, not what it "
    "makes)": [
        with_config({"wandb": {"enabled": True, "project": "elsewhere"}}),
        with_config(
            {
                "resources": {
                    "train_threads": 2,
                    "train_mem_mb": 6000,
                    "predict_threads": 1,
                    "train_runtime_min": 90,
                    "preprocess_threads": 1,
                }
            }
        ),
        with_config({"training": {"device": "auto", "data_augmentation_workers": 1}}),
    ],
    "`synthetic.*` with `data.source: folder`": [with_config({"synthetic": {"seed": 3, "preset": "hard"}})],
}


def test_every_readme_row_is_checked_here():
    assert set(readme_rerun_table()) == set(ROW_CHANGES)


@pytest.mark.parametrize("row", list(ROW_CHANGES), ids=lambda row: re.sub(r"[^a-z0-9_.*]+", "-", row.lower())[:40])
def test_each_change_reruns_what_readme_says(finished_run, row):
    # a segmentation-only run's report plots do not read the benchmark, so --omit-from leaves them in
    expected = readme_rerun_table()[row] - (
        OMITTED_RULES - {"report_plots"} if row == SEGMENTATION_ROW else OMITTED_RULES
    )
    for make in ROW_CHANGES[row]:
        with ExitStack() as stack:
            change = stack.enter_context(make(finished_run))
            jobs = planned_jobs(finished_run, change)
        assert set(jobs) == expected, (row, change, jobs)
    assert planned_jobs(finished_run) == {}, "a change was not put back"


def test_a_new_test_image_reruns_only_the_test_split_prediction(finished_run):
    with added_test_image()(finished_run):
        jobs = planned_jobs(finished_run)
    assert jobs["predict_split"] == 1 and not TRAINING & set(jobs), jobs


def test_a_stage2_setting_reruns_only_stage2s_final_validation(finished_run):
    jobs = planned_jobs(finished_run, {"training": {"stage2": {"initial_lr": 0.001}}})
    assert jobs["final_validation"] == 1 and "train_stage1" not in jobs, jobs
