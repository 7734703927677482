"""Reading the project's CSV tables: one checked reader for every table-format owner
(:mod:`~pancreas_mtl.data.case_table`, :mod:`~pancreas_mtl.data.class_probabilities`,
:mod:`~pancreas_mtl.evaluation.summary`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pancreas_mtl.errors import UserInputError


def read_checked_csv(path: str | Path, what: str, read_as: str, columns, **read_csv_kwargs) -> pd.DataFrame:
    """Read a CSV file that must hold ``columns``; the project's one checked CSV reader.

    A missing file (``"{what} not found: {path}"``), a file pandas cannot read (``"{path}: cannot be read
    as {read_as} (...)"``) and missing columns each raise :class:`~pancreas_mtl.errors.UserInputError`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{what} not found: {path}")
    try:
        table = pd.read_csv(path, **read_csv_kwargs)
    except Exception as err:
        raise UserInputError(f"{path}: cannot be read as {read_as} ({type(err).__name__}: {err})") from err
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UserInputError(f"{path}: missing column(s) {', '.join(missing)} (expected {','.join(columns)})")
    return table
