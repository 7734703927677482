"""nnU-Net's folders and environment variables, and running its command-line tools with logging."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

log = logging.getLogger(__name__)

# nnU-Net 2.8 searches the folders in nnUNet_extTrainer (after its own) for trainer classes by name.
TRAINER_DIR = Path(__file__).resolve().parent / "ext_trainers"


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


def resolve_device(device: str) -> str:
    """'auto' picks CUDA where torch sees a GPU, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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


class CommandFailed(RuntimeError):
    def __init__(self, what: str, args: list[str], returncode: int):
        self.returncode = returncode
        super().__init__(f"{what} failed (exit code {returncode}): {' '.join(args)}")


def run_nnunet_command(args: list[str], env: dict[str, str], what: str, graceful_stop: bool = False) -> None:
    """Run an nnU-Net CLI, streaming its output into our log; a failure names the command (see
    :func:`run_command` for ``graceful_stop``)."""
    run_command([nnunet_executable(args[0]), *args[1:]], env, what, graceful_stop)


@contextmanager
def _waiting_through_sigterm(proc: subprocess.Popen, what: str):
    """While ``proc`` runs, SIGTERM does not end this process: it is passed on to ``proc`` (which may have had it
    too: a scheduler signals every process of a job), and this process keeps waiting for it."""
    def forward(signum, frame):
        log.warning("SIGTERM received: waiting for %s to stop", what)
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(args: list[str], env: dict[str, str] | None, what: str, graceful_stop: bool = False) -> None:
    """Run a command, streaming its output line by line into our log; a failure (:class:`CommandFailed`) names
    the command.

    ``graceful_stop``: for a command that stops by itself on SIGTERM (the trainers): it starts with SIGTERM ignored,
    so that only the processes that handle it act on it (nnU-Net's DDP launcher would otherwise die and leave its
    ranks behind), and this process waits for it to finish instead of leaving first."""
    # Child output goes line by line into our log (a pipe would otherwise buffer it for minutes).
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    log.info("running: %s", " ".join(args))
    ignore_sigterm = (lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN)) if graceful_stop else None
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        preexec_fn=ignore_sigterm,
    )
    assert proc.stdout is not None
    with _waiting_through_sigterm(proc, what) if graceful_stop else nullcontext():
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                log.info("[%s] %s", what, line)
        returncode = proc.wait()
    if returncode != 0:
        raise CommandFailed(what, args, returncode)
