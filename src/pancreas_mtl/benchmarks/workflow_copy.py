"""A fresh copy of the workflow for a run of its own: the files a clone holds, without results or caches.

The real-CT benchmark runs each of its rows in such a copy, and the tests' end-to-end runs do too, so that neither
touches the checkout's ``results/``. The copy's digest names what was run: a later benchmark reuses a row's result
only when the workflow's files are unchanged.
"""

from __future__ import annotations

import hashlib
import shutil
from fnmatch import fnmatch
from pathlib import Path

#: what a run of the workflow needs from a checkout
WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "envs", "src", ".test", "profiles")
_IGNORED = ("__pycache__", "*.egg-info", ".snakemake", "*.pyc")


def copy_workflow(source: str | Path, target: str | Path) -> Path:
    """Copy the workflow's parts of ``source`` into ``target`` (created; parts it already holds are replaced)."""
    source, target = Path(source), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns(*_IGNORED)
    for part in WORKFLOW_PARTS:
        origin, copy = source / part, target / part
        if origin.is_dir():
            if copy.exists():
                shutil.rmtree(copy)
            shutil.copytree(origin, copy, ignore=ignore)
        elif origin.is_file():
            shutil.copy2(origin, copy)
    return target


def _copied_files(source: Path) -> list[Path]:
    files = []
    for part in WORKFLOW_PARTS:
        origin = source / part
        if origin.is_file():
            files.append(origin)
        elif origin.is_dir():
            for path in sorted(origin.rglob("*")):
                relative = path.relative_to(source)
                ignored = any(fnmatch(name, pattern) for name in relative.parts for pattern in _IGNORED)
                if path.is_file() and not ignored:
                    files.append(path)
    return files


def workflow_digest(source: str | Path) -> str:
    """SHA-256 over the names and contents of the files :func:`copy_workflow` copies from ``source``."""
    source = Path(source)
    digest = hashlib.sha256()
    for path in _copied_files(source):
        digest.update(str(path.relative_to(source)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
