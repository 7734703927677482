"""The model archive's target, ``results/model/pancreas_mtl_model.zip``: what it packs, planned by dry runs on
folders of quiz-named files (the archive's own checks are in tests/inference/test_model_archive.py)."""

import re

import pytest
import yaml

from tests.workflow_helpers import copy_workflow, run_snakemake, snakemake_output, write_quiz_names

TARGET = "results/model/pancreas_mtl_model.zip"


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("model_export") / "workflow")


def export_inputs(workflow, tmp_path, **counts) -> str:
    quiz = write_quiz_names(tmp_path / "quiz", **counts)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": "folder", "quiz_dir": str(quiz)}}))
    result = run_snakemake(workflow, TARGET, "-n", "--cores", "1", "--configfile", str(config))
    out = snakemake_output(result)
    assert result.returncode == 0, out[-3000:]
    (inputs,) = re.findall(r"^rule export_model:\n    input: (.*)$", out, flags=re.M)
    return inputs


def test_a_multitask_run_packs_stage2_with_its_chosen_checkpoint_and_metrics(workflow, tmp_path):
    inputs = export_inputs(workflow, tmp_path, train=(4, 4, 4), validation=(1, 1, 1))
    assert (
        "nnUNetTrainerPancreasMultiTask__nnUNetResEncUNetMPlans__3d_cpu_demo/fold_0/checkpoint_best_combined.pth"
        in inputs
    )
    assert "results/metrics/summary.json" in inputs and "case_table.csv" in inputs


def test_a_segmentation_run_without_validation_cases_packs_stage1_without_metrics(workflow, tmp_path):
    inputs = export_inputs(workflow, tmp_path, train=(0, 0, 6), validation=None, test=None)
    assert "nnUNetTrainerPancreasSeg__" in inputs and "nnUNetTrainerPancreasMultiTask__" not in inputs
    assert "results/metrics/summary.json" not in inputs
