import os
import shutil
import subprocess
import sys
from pathlib import Path

from pancreas_mtl.benchmarks import workflow_copy

REPO = Path(__file__).resolve().parents[1]
#: the smallest CPU configuration the tests' end-to-end runs train on
TINY_CPU_CONFIGURATION = {
    "name": "3d_cpu_demo",
    "feature_divisor": 8,
    "max_blocks_per_stage": 1,
    "batch_size": 2,
    "patch_size": None,
}
#: a training stage of one epoch of two iterations, with its full validation and checkpoint
ONE_EPOCH = {
    "num_epochs": 1,
    "iterations_per_epoch": 2,
    "val_iterations_per_epoch": 1,
    "full_validation_every": 1,
    "checkpoint_every": 1,
}


def copy_workflow(target: Path) -> Path:
    """A copy of the workflow (no results, no caches) so a test run never touches the checkout."""
    return workflow_copy.copy_workflow(REPO, target)


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


def write_quiz_names(root: Path, train=(2, 2, 2), validation=(1, 1, 1), test: int | None = 1) -> Path:
    """A quiz folder of empty files named as the quiz names them, ``train``/``validation`` cases per subtype and
    ``test`` test images (None: no validation/ or test/ folder when its counts are None). Enough for a dry run and the
    start-up check, which read names only; the conversion would refuse the files."""
    number = iter(range(1, 1000))
    for split, counts in (("train", train), ("validation", validation)):
        for subtype, n in enumerate(counts or ()):
            folder = root / split / f"subtype{subtype}"
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                case = f"quiz_{subtype}_{next(number):03d}"
                (folder / f"{case}_0000.nii.gz").write_bytes(b"")
                (folder / f"{case}.nii.gz").write_bytes(b"")
    if test is not None:
        (root / "test").mkdir(parents=True, exist_ok=True)
        for _ in range(test):
            (root / "test" / f"quiz_{next(number):03d}_0000.nii.gz").write_bytes(b"")
    return root
