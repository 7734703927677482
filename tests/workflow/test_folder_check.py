"""What a quiz folder can support, checked at start-up: small and uneven folders, missing splits, an unknown
configuration. Dry runs on folders of empty, quiz-named files (the check reads names only) and the check itself."""

import re
from pathlib import Path

import pytest
import yaml

from pancreas_mtl.data.folder_check import folder_plan, quiz_counts, synthetic_counts
from tests.workflow_helpers import copy_workflow, run_snakemake, snakemake_output, write_quiz_names

DEMO_CONFIG = {
    "training": {
        "mode": "auto",
        "split": "official",
        "selection_fraction": 0.15,
        "k": 5,
        "folds": [0],
        "inference_checkpoint": "best_combined",
        "stage1": {"trainer": "project"},
    },
    "benchmark": {"split": "validation"},
    "nnunet": {"configuration": "3d_cpu_demo", "cpu_configuration": {"name": "3d_cpu_demo"}},
}


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("folder_check") / "workflow")


def dry_run(workflow: Path, quiz: Path, config_file: Path | None = None, **config):
    """A dry run on a quiz folder, with ``config`` sections laid over (written to ``config_file``, by default beside
    the quiz folder); (return code, output, rules it schedules)."""
    config_file = config_file or quiz.parent / "config.yaml"
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


def test_a_selection_fraction_of_zero_trains_on_every_case_and_uses_the_last_checkpoint(workflow, tmp_path):
    """What a benchmark comparing trainers on the same training cases asks for: nothing held out."""
    quiz = write_quiz_names(tmp_path / "quiz", train=(0, 0, 9), validation=(0, 0, 2))
    code, out, jobs = dry_run(workflow, quiz, training={"selection_fraction": 0})
    assert code == 0, out
    assert "training.selection_fraction 0: no training case is held out" in out and "on all 9 training cases" in out
    inputs = re.findall(r"^rule predict_split:\n    input: (.*)$", out, flags=re.M)
    assert inputs and all("checkpoint_final.pth" in i and "checkpoint_best" not in i for i in inputs), inputs


def test_the_stock_trainer_row_trains_stage1_with_nnunets_own_trainer_and_its_last_checkpoint(workflow, tmp_path):
    quiz = write_quiz_names(tmp_path / "quiz", train=(0, 0, 9), validation=(0, 0, 2))
    code, out, jobs = dry_run(workflow, quiz, training={"stage1": {"trainer": "stock"}})
    assert code == 0, out
    assert "training.stage1.trainer stock: nnU-Net's own trainer keeps no checkpoint the workflow selects" in out
    outputs = re.findall(r"^rule train_stage1:\n(?:    .*\n)*?    output: (.*)$", out, flags=re.M)
    assert outputs == [
        "results/nnunet/trained/Dataset501_PancreasQuiz/nnUNetTrainerStockBudget__nnUNetResEncUNetMPlans"
        "__3d_cpu_demo/fold_0/checkpoint_final.pth"
    ], outputs
    inputs = re.findall(r"^rule predict_split:\n    input: (.*)$", out, flags=re.M)
    assert inputs and all("nnUNetTrainerStockBudget__" in i and "checkpoint_final.pth" in i for i in inputs), inputs


def test_the_stock_trainer_is_refused_where_stage2_would_follow(workflow, tmp_path):
    quiz = write_quiz_names(tmp_path / "quiz")
    code, out, _ = dry_run(workflow, quiz, training={"stage1": {"trainer": "stock"}})
    assert_refused_before_any_work(workflow, code, out, "training.stage1.trainer stock (nnU-Net's own trainer")


def test_kfold_with_more_folds_than_training_cases_is_refused(workflow, tmp_path):
    quiz = write_quiz_names(tmp_path / "quiz", train=(2, 2, 2))
    code, out, _ = dry_run(workflow, quiz, training={"split": "kfold", "k": 7})
    assert_refused_before_any_work(workflow, code, out, "training.k 7 needs 2 <= k <= 6", "set training.k")


def test_a_subtype_without_training_cases_is_refused(workflow, tmp_path):
    quiz = write_quiz_names(tmp_path / "quiz", train=(3, 0, 3))
    code, out, _ = dry_run(workflow, quiz)
    assert_refused_before_any_work(
        workflow,
        code,
        out,
        "no training cases of subtype(s) 1 (3/0/3",
        "train/subtype1/",
        "or set training.mode: segmentation",
    )


# What a segmentation-only run makes: stage 1, its predictions, the segmentation metrics and figures.
SEGMENTATION_JOBS = {"train_stage1", "final_validation", "predict_split", "evaluate_validation", "report_plots"}
# What needs the classification head, and so a second subtype.
MULTITASK_JOBS = {"train_stage2", "subtype_results", "submission_zip", "benchmark_inference"}


def assert_segmentation_only(out: str, jobs: set[str]):
    assert SEGMENTATION_JOBS <= jobs and not MULTITASK_JOBS & jobs, jobs
    assert "nnUNetTrainerPancreasMultiTask" not in out, "a stage-2 model is planned"
    for inputs in re.findall(r"^rule predict_split:\n    input: (.*)$", out, flags=re.M):
        assert "nnUNetTrainerPancreasSeg__" in inputs and "checkpoint_best_combined.pth" in inputs, inputs


def test_a_single_subtype_folder_runs_the_segmentation_path(workflow, tmp_path):
    quiz = write_quiz_names(tmp_path / "quiz", train=(0, 4, 0), validation=(0, 2, 0), test=2)
    code, out, jobs = dry_run(workflow, quiz)
    assert code == 0, out
    assert "only subtype 1 has training cases (0/4/0" in out and "the segmentation path runs alone" in out, out
    assert_segmentation_only(out, jobs)
    assert {"convert_test_images"} <= jobs, jobs


def test_a_single_subtype_folder_without_validation_or_test_trains_and_validates_stage1(workflow, tmp_path):
    """The shape of ../shared/real-ct/data: 45 labelled cases, all subtype 2, no validation/ and no test/. Stage 1
    trains, and nnU-Net's final validation predicts and scores the cases that select its checkpoint."""
    quiz = write_quiz_names(tmp_path / "quiz", train=(0, 0, 45), validation=None, test=None)
    code, out, jobs = dry_run(workflow, quiz)
    assert code == 0, out
    assert "has no validation/ folder" in out and "has no test images (test/)" in out
    assert jobs == {"all", "convert_quiz_to_nnunet", "plan_and_preprocess", "train_stage1", "final_validation"}, jobs
    assert "nnUNetTrainerPancreasMultiTask" not in out


def test_the_real_ct_folder_plans_stage1_its_validation_and_nothing_needing_a_second_subtype(
    workflow, tmp_path, real_ct_dir, tree_digest
):
    """Opt-in (PANCREAS_MTL_REAL_CT): the 45 real subtype-2 cases of ../shared/real-ct, as a user would point at
    them. Read only: the dry run leaves the folder as it was."""
    before = tree_digest(real_ct_dir)
    code, out, jobs = dry_run(workflow, real_ct_dir, tmp_path / "config.yaml", training={"mode": "auto"})
    assert code == 0, out
    assert re.search(r"^train\s+0\s+0\s+45\s+45$", out, flags=re.M), out
    assert "only subtype 2 has training cases (0/0/45" in out and "the segmentation path runs alone" in out
    assert jobs == {"all", "convert_quiz_to_nnunet", "plan_and_preprocess", "train_stage1", "final_validation"}, jobs
    assert "nnUNetTrainerPancreasMultiTask" not in out
    assert tree_digest(real_ct_dir) == before


def write_plain_names(root: Path, train: int = 5, validation: int = 2) -> Path:
    """A segmentation set laid out as nnU-Net's: image and mask pairs directly in train/ and validation/."""
    for split, n in (("train", train), ("validation", validation)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            (root / split / f"{split}-{i}_0000.nii.gz").write_bytes(b"")
            (root / split / f"{split}-{i}.nii.gz").write_bytes(b"")
    return root


def test_a_folder_without_subtype_folders_runs_the_segmentation_path(workflow, tmp_path):
    quiz = write_plain_names(tmp_path / "quiz")
    code, out, jobs = dry_run(workflow, quiz)
    assert code == 0, out
    table = out[out.index(f"cases in {quiz}:") :].splitlines()[:5]
    assert table[1].split() == ["subtype0", "subtype1", "subtype2", "plain", "total"], table
    assert re.fullmatch(r"train\s+0\s+0\s+0\s+5\s+5", table[2]) and re.fullmatch(r"test\s+missing", table[4]), table
    assert "holds 5 image and mask pairs without subtype folders: the segmentation path runs alone" in out
    assert_segmentation_only(out, jobs)


def test_a_folder_without_subtype_folders_is_refused_in_multitask_mode(workflow, tmp_path):
    quiz = write_plain_names(tmp_path / "quiz")
    code, out, _ = dry_run(workflow, quiz, training={"mode": "multitask"})
    assert_refused_before_any_work(
        workflow, code, out, "holds 5 image and mask pairs without subtype folders, and training.mode multitask"
    )


def test_segmentation_mode_is_chosen_by_hand_on_any_folder(workflow, tmp_path):
    quiz = write_quiz_names(tmp_path / "quiz", train=(2, 0, 3))
    code, out, jobs = dry_run(workflow, quiz, training={"mode": "segmentation"})
    assert code == 0, out
    assert "training.mode segmentation: stage 1 alone" in out
    assert_segmentation_only(out, jobs)


def test_multitask_mode_on_a_single_subtype_folder_is_refused(workflow, tmp_path):
    quiz = write_quiz_names(tmp_path / "quiz", train=(0, 0, 5))
    code, out, _ = dry_run(workflow, quiz, training={"mode": "multitask"})
    assert_refused_before_any_work(
        workflow, code, out, "no training cases of subtype(s) 0, 1 (0/0/5", "or set training.mode: segmentation"
    )


def test_a_segmentation_run_cannot_use_the_best_f1_checkpoint(workflow, tmp_path):
    quiz = write_quiz_names(tmp_path / "quiz", train=(0, 0, 5))
    code, out, _ = dry_run(workflow, quiz, training={"inference_checkpoint": "best_f1"})
    assert_refused_before_any_work(
        workflow, code, out, "training.inference_checkpoint 'best_f1' is chosen by the classification head"
    )


def test_the_plan_rules_data_follows_a_cpu_configuration_with_its_own_spacing(workflow, tmp_path):
    quiz = write_quiz_names(tmp_path / "quiz")
    spacing = {"name": "3d_cpu_demo", "spacing": [4.0, 1.5, 1.5]}
    for configuration, data in (
        ("3d_cpu_demo", "nnUNetResEncUNetMPlans_3d_cpu_demo"),
        ("3d_fullres", "nnUNetPlans_3d_fullres"),
    ):
        code, out, _ = dry_run(workflow, quiz, nnunet={"configuration": configuration, "cpu_configuration": spacing})
        assert code == 0, out
        outputs = re.findall(r"^rule plan_and_preprocess:\n(?:    .*\n)*?    output: (.*)$", out, flags=re.M)
        assert outputs and f"/{data}.done" in outputs[0], (configuration, outputs)


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
