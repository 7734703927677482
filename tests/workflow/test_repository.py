"""The workflow's static checks: Snakemake lint, snakefmt, ruff, a dry-run of the DAG, README/CI agreement."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.workflow_helpers import REPO, copy_workflow, run_snakemake, write_quiz_names


@pytest.fixture
def workflow_copy(tmp_path) -> Path:
    return copy_workflow(tmp_path / "workflow_copy")


SNAKEMAKE_FILES = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]


def readme_commands() -> list[str]:
    """Shell commands of the README's fenced bash blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return [
        line.strip() for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")
    ]


def test_ci_runs_the_readme_test_command():
    test_commands = [c for c in readme_commands() if "pytest" in c]
    assert test_commands, "README has no test command"
    ci = (REPO / ".ci" / "run").read_text()
    assert test_commands[0] in ci.splitlines()
    assert "bash install.sh" in ci


def test_readme_first_command_installs_and_runs_the_workflow():
    first = readme_commands()[0]
    assert first.startswith("bash install.sh") and "snakemake" in first


def test_snakemake_lint_is_clean(workflow_copy):
    result = run_snakemake(workflow_copy, "--lint", "--cores", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_snakefmt_check():
    snakefmt = Path(sys.executable).parent / "snakefmt"
    result = subprocess.run([str(snakefmt), "--check", *map(str, SNAKEMAKE_FILES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


PYTHON_TREES = [str(REPO / tree) for tree in ("src", "tests", "workflow/scripts")]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_is_clean(command):
    """ruff, configured in pyproject.toml: the lint rules that never change behaviour, and its formatting."""
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([str(ruff), *command, *PYTHON_TREES], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_of_the_default_config_plans_the_whole_dag(workflow_copy):
    result = run_snakemake(workflow_copy, "-n", "--cores", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout + result.stderr
    for rule in ["make_synthetic_quiz", "convert_quiz_to_nnunet", "plan_and_preprocess"]:
        assert re.search(rf"^{rule}\s+1$", out, flags=re.M), f"{rule} not planned:\n{out}"


def test_the_workflow_parses_without_cores_as_report_and_the_slurm_profile_run_it(workflow_copy):
    """Defect: a rule's `threads: workflow.cores` stopped every command that gives no --cores (`--report`, the SLURM
    profile's `jobs:`) with "Workflow requires a total number of cores to be defined". `--report` before any run
    parses every rule and then stops at the first report file that is not there yet."""
    result = run_snakemake(workflow_copy, "--report", "results/report.html")
    out = result.stdout + result.stderr
    assert "total number of cores" not in out, out
    assert "marked for report but does not exist" in out, out


def test_a_bad_config_value_stops_the_workflow_with_a_clear_message(workflow_copy):
    result = run_snakemake(workflow_copy, "-n", "--cores", "1", "--config", "resources={'preprocess_threads': 'two'}")
    assert result.returncode != 0
    assert "resources.preprocess_threads: 'two' is not of type 'integer'" in result.stdout + result.stderr


def test_folder_source_tracks_every_quiz_file(workflow_copy, tmp_path):
    quiz = write_quiz_names(tmp_path / "quiz")
    result = run_snakemake(
        workflow_copy, "-n", "--cores", "1", "--config", f"data={{'source': 'folder', 'quiz_dir': '{quiz}'}}"
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "make_synthetic_quiz" not in out
    assert re.search(r"^convert_quiz_to_nnunet\s+1$", out, flags=re.M)
