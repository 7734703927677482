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


README_MAX_LINES = 180
# The pages whose relative links must resolve: the front page, the configuration page, docs/ and the profiles'.
DOC_PAGES = [REPO / "README.md", REPO / "config" / "README.md", REPO / "profiles" / "README.md"]


def doc_pages() -> list[Path]:
    return [*DOC_PAGES, *sorted((REPO / "docs").glob("*.md"))]


def without_code(markdown: str) -> str:
    """The text outside fenced code blocks and inline code, where links and headings are what they look like."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M))


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens, -1, -2, ...
    for repeats."""
    anchors, seen = set(), {}
    for heading in re.findall(
        r"^#{1,6}\s+(.+?)\s*#*$", re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M), flags=re.M
    ):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def relative_links(page: Path) -> list[str]:
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", without_code(page.read_text()))
    return [target for target in targets if not re.match(r"[a-z]+:", target)]


def test_readme_is_a_front_page():
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines; move detail into docs/ (at most {README_MAX_LINES})"
    )


def test_github_anchors_follow_githubs_slugs():
    text = "# Running on a cluster\n## 5. Time limits, preemption and retries\n## What reruns when you change...\n"
    text += "```\n# a comment, not a heading\n```\n## Running on a cluster\n### `training.labels`: regions\n"
    assert github_anchors(text) == {
        "running-on-a-cluster",
        "5-time-limits-preemption-and-retries",
        "what-reruns-when-you-change",
        "running-on-a-cluster-1",
        "traininglabels-regions",
    }


@pytest.mark.parametrize("page", doc_pages(), ids=lambda page: str(page.relative_to(REPO)))
def test_relative_links_resolve(page):
    """Every relative link (and image) of the documentation names a file that exists, and an anchor into a markdown
    file names one of its headings."""
    broken = []
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no {target}")
        elif anchor and target.suffix == ".md" and anchor not in github_anchors(target.read_text()):
            broken.append(f"{link}: no heading #{anchor} in {target.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


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
