"""nnU-Net's folders and environment variables, and running its command-line tools with logging."""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from pancreas_mtl.runtime import run_command

# nnU-Net 2.8 searches the folders in nnUNet_extTrainer (after its own) for trainer classes by name. The shim there
# imports the trainers (pancreas_mtl.training); known here as a path only, so this adapter imports nothing above it.
TRAINER_DIR = Path(__file__).resolve().parents[1] / "training" / "ext_trainers"


@dataclass(frozen=True)
class NnunetFolders:
    raw: Path
    preprocessed: Path
    results: Path  # nnU-Net's results root: the finished models, as predictors read them
    # Where the models train (nnU-Net's results root while they do): outside every declared output, so nothing a
    # retry or rerun deletes (pancreas_mtl.training.work_folder)
    training: Path

    @classmethod
    def under(cls, root: str | Path) -> "NnunetFolders":
        root = Path(root)
        return cls(root / "raw", root / "preprocessed", root / "trained", root / "training")

    def for_training(self) -> "NnunetFolders":
        """The same folders with nnU-Net's results root at the training root."""
        return replace(self, results=self.training)

    def environment(self, **extra: str) -> dict[str, str]:
        """A copy of os.environ with nnU-Net's folder variables set (absolute) and ``extra`` added."""
        env = dict(os.environ)
        env["nnUNet_raw"] = str(self.raw.resolve())
        env["nnUNet_preprocessed"] = str(self.preprocessed.resolve())
        env["nnUNet_results"] = str(self.results.resolve())
        env["nnUNet_extTrainer"] = os.pathsep.join(
            p for p in (str(TRAINER_DIR), os.environ.get("nnUNet_extTrainer", "")) if p
        )
        env.update({k: str(v) for k, v in extra.items()})
        return env


def register_trainers() -> None:
    """Let nnU-Net in this process find our trainers by name (prediction resolves checkpoint['trainer_name'])."""
    folders = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if str(TRAINER_DIR) not in folders:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join([str(TRAINER_DIR), *folders])


def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{int(dataset_id):03d}_{name}"


def dataset_id_of(dataset_folder: str) -> int:
    """The id of a ``DatasetNNN_Name`` folder name (the inverse of :func:`dataset_folder_name`)."""
    match = re.fullmatch(r"Dataset(\d{3})_.+", dataset_folder)
    if match is None:
        raise ValueError(f"{dataset_folder!r} is not an nnU-Net dataset name (DatasetNNN_Name)")
    return int(match[1])


def nnunet_executable(name: str) -> str:
    """An nnU-Net entry point from this interpreter's environment (also when it is not on PATH)."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found beside {sys.executable} nor on PATH: is nnunetv2 installed?")
    return found


def run_nnunet_command(args: list[str], env: dict[str, str], what: str, graceful_stop: bool = False) -> None:
    """Run an nnU-Net CLI, streaming its output into our log; a failure names the command (see
    :func:`run_command` for ``graceful_stop``)."""
    run_command([nnunet_executable(args[0]), *args[1:]], env, what, graceful_stop)
