"""Shared start-up for workflow/scripts/*.py: log to the rule's log file, fail with a clear message.

Snakemake scripts call :func:`run_logged` with their main function; user-input errors are written
as a plain message (no traceback) to the log and stderr, and the script exits non-zero.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Callable

from pancreas_mtl.errors import TrainingStopped, UserInputError


def setup_logging(log_path: str | Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        Path(log_path).write_text("")
        # appending: other writers may add to the file too (a training copies its earlier attempts' logs in)
        handlers.append(logging.FileHandler(log_path, mode="a"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def run_logged(main: Callable[[], None], log_path: str | Path | None) -> None:
    setup_logging(log_path)
    log = logging.getLogger("pancreas_mtl")
    start = time.perf_counter()
    try:
        main()
        log.info("done in %.1f s", time.perf_counter() - start)
    except UserInputError as err:
        log.error("%s", err.render())
        sys.exit(1)
    except TrainingStopped as err:
        log.error("%s", err)
        sys.exit(1)
    except Exception:
        log.exception("unexpected failure")
        sys.exit(1)
