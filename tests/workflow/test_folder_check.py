"""What a quiz folder can support, checked at start-up: small and uneven folders, missing splits, an unknown
configuration. Dry runs on folders of empty, quiz-named files (the check reads names only) and the check itself."""

import re
from pathlib import Path

import pytest
import yaml

from pancreas_mtl.data.folder_check import folder_plan, quiz_counts, synthetic_counts
from tests.workflow_helpers import copy_workflow, run_snakemake, snakemake_output, write_quiz_names

DEMO_CONFIG = {
    "training": {"split": "official", "selection_fraction": 0.15, "k": 5, "folds": [0]},
    "benchmark": {"split": "validation"},
    "nnunet": {"configuration": "3d_cpu_demo", "cpu_configuration": {"name": "3d_cpu_demo"}},
}


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("folder_check") / "workflow")


def dry_run(workflow: Path, quiz: Path, **config):
    """A dry run on a quiz folder, with ``config`` sections laid over; (return code, output, rules it schedules)."""
    config_file = quiz.parent / "config.yaml"
    config_file.write_text(yaml.safe_dump({"data": {"source": "folder", "quiz_dir": str(quiz)}, **config}))
    result = run_snakemake(workflow, "-n", "--cores", "1", "--configfile", str(config_file))
    out = snakemake_output(result)
    jobs = (
        set(re.findall(r"^(\w+)\s+\d+$", out.split("Job stats:", 1)[1], flags=re.M)) if "Job stats:" in out else set()
    )
    return result.returncode, out, jobs - {"job", "total"}


def assert_refused_before_any_work(workflow: Path, code: int, out: str, *needles: str):
    assert code != 0, out
    assert "The quiz data cannot support this run; nothing was started" in out, out
    for needle in needles:
        assert needle in out, (needle, out[-3000:])
    assert "Traceback" not in out, out
    assert not (workflow / "results").exists() and not (workflow / "resources").exists()


def test_the_counts_are_logged_as_one_table(workflow, tmp_path):
    quiz = write_quiz_names(tmp_path / "quiz", train=(2, 3, 4), validation=(1, 1, 2), test=3)
    code, out, _ = dry_run(workflow, quiz)
    assert code == 0, out
    table = out[out.index(f"cases in {quiz}:") :].splitlines()[:5]
    assert re.fullmatch(r"train\s+2\s+3\s+4\s+9", table[2]), table
    assert re.fullmatch(r"validation\s+1\s+1\s+2\s+4", table[3]), table
    assert re.fullmatch(r"test\s+3", table[4]), table


def test_one_training_case_per_subtype_trains_on_all_and_uses_the_last_checkpoint(workflow, tmp_path):
    """Before, the run got through conversion and planning and died in nnU-Net's data loader (no selection cases).
    Now it trains on all training cases, and stage 2 and inference take checkpoint_final, as the log says."""
    quiz = write_quiz_names(tmp_path / "quiz", train=(1, 1, 1))
    code, out, jobs = dry_run(workflow, quiz)
    assert code == 0, out
    assert f"{quiz}/train: training.split official" in out and "1/1/1 (subtypes 0/1/2)" in out
    assert "the last epoch's checkpoint (checkpoint_final) is the one stage 2 starts from and inference uses" in out
    assert {"train_stage1", "train_stage2", "predict_split"} <= jobs, jobs
    for rule in ("train_stage2", "predict_split"):
        inputs = re.findall(rf"^rule {rule}:\n    input: (.*)$", out, flags=re.M)
        assert inputs and all("checkpoint_final.pth" in i and "checkpoint_best" not in i for i in inputs), inputs


def test_kfold_with_more_folds_than_training_cases_is_refused(workflow, tmp_path):
    quiz = write_quiz_names(tmp_path / "quiz", train=(2, 2, 2))
    code, out, _ = dry_run(workflow, quiz, training={"split": "kfold", "k": 7})
    assert_refused_before_any_work(workflow, code, out, "training.k 7 needs 2 <= k <= 6", "set training.k")


def test_a_subtype_without_training_cases_is_refused(workflow, tmp_path):
    quiz = write_quiz_names(tmp_path / "quiz", train=(3, 0, 3))
    code, out, _ = dry_run(workflow, quiz)
    assert_refused_before_any_work(workflow, code, out, "no training cases of subtype(s) 1 (3/0/3", "train/subtype1/")


def test_a_single_subtype_folder_without_validation_or_test_is_refused_naming_segmentation_only(workflow, tmp_path):
    """The shape of ../shared/real-ct/data: 45 labelled cases, all subtype 2, no validation/ and no test/."""
    quiz = write_quiz_names(tmp_path / "quiz", train=(0, 0, 45), validation=None, test=None)
    code, out, _ = dry_run(workflow, quiz)
    assert_refused_before_any_work(
        workflow, code, out, "only subtype 2 has training cases (0/0/45", "Segmentation-only folders run the "
    )
    assert "has no validation/ folder" in out and "has no test images (test/)" in out


def test_an_unknown_configuration_is_refused(workflow, tmp_path):
    quiz = write_quiz_names(tmp_path / "quiz")
    code, out, _ = dry_run(workflow, quiz, nnunet={"configuration": "3d_typo"})
    assert_refused_before_any_work(workflow, code, out, "nnunet.configuration '3d_typo' is neither 3d_fullres")
    code, out, _ = dry_run(workflow, quiz, nnunet={"configuration": "3d_lowres"})
    assert_refused_before_any_work(workflow, code, out, "'3d_lowres': the workflow plans and preprocesses 3d_fullres")


def test_without_test_images_the_test_targets_are_left_out(workflow, tmp_path):
    quiz = write_quiz_names(tmp_path / "quiz", test=None)
    code, out, jobs = dry_run(workflow, quiz)
    assert code == 0, out
    assert (
        "has no test images (test/): the test predictions, subtype_results.csv and submission.zip are left out" in out
    )
    assert {"train_stage2", "evaluate_validation", "benchmark_inference"} <= jobs, jobs
    assert not {"convert_test_images", "subtype_results", "submission_zip"} & jobs, jobs


def test_without_validation_cases_the_metrics_are_left_out(workflow, tmp_path):
    quiz = write_quiz_names(tmp_path / "quiz", validation=None)
    code, out, jobs = dry_run(workflow, quiz)
    assert code == 0, out
    assert "has no validation/ folder: the final metrics, the inference benchmark and the report plots" in out
    assert {"train_stage2", "final_validation", "subtype_results", "submission_zip"} <= jobs, jobs
    assert not {"evaluate_validation", "benchmark_inference", "report_plots"} & jobs, jobs


def test_a_test_benchmark_without_test_images_is_refused(workflow, tmp_path):
    quiz = write_quiz_names(tmp_path / "quiz", test=None)
    code, out, _ = dry_run(workflow, quiz, benchmark={"split": "test"})
    assert_refused_before_any_work(workflow, code, out, "benchmark.split test, but the folder has no test images")


def test_the_synthetic_datas_counts_are_checked_too():
    plan = folder_plan(synthetic_counts({"train": [1, 1, 1], "validation": [1, 1, 1], "test": 0}), DEMO_CONFIG)
    assert not plan.problems and not plan.select_checkpoints
    assert [n for n in plan.notes if "training.split official" in n], plan.notes
    assert not plan.predict_test and plan.evaluate_validation


def test_the_counts_come_from_the_names(quiz_builder):
    quiz_builder.standard(n_train=2, n_validation=1, n_test=2)
    counts = quiz_counts(quiz_builder.root)
    assert (counts.train, counts.validation, counts.test, counts.missing) == ((2, 2, 2), (1, 1, 1), 2, ())
    assert folder_plan(counts, DEMO_CONFIG).problems == []
