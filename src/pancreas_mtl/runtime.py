"""What a job's process needs beside nnU-Net: the device it computes on, and child commands run with their output
in its log."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from contextlib import contextmanager, nullcontext

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """'auto' picks CUDA where torch sees a GPU, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class CommandFailed(RuntimeError):
    def __init__(self, what: str, args: list[str], returncode: int):
        self.returncode = returncode
        super().__init__(f"{what} failed (exit code {returncode}): {' '.join(args)}")


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
        args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
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
