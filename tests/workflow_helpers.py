import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ["Snakefile", "workflow", "config", "envs", "src", ".test", "profiles"]


def copy_workflow(target: Path) -> Path:
    """A copy of the workflow (no results, no caches) so a test run never touches the checkout."""
    target.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".snakemake")
    for part in WORKFLOW_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, target / part, ignore=ignore)
        elif source.is_file():
            shutil.copy2(source, target / part)
    return target


def snakemake_cli() -> list[str]:
    """Snakemake beside this interpreter (the project's venv), else the one on PATH (a --target install)."""
    beside = Path(sys.executable).parent / "snakemake"
    return [str(beside) if beside.is_file() else shutil.which("snakemake") or str(beside)]


def run_snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return subprocess.run(
        [*snakemake_cli(), *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )


def snakemake_output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr
