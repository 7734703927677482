"""``case_table.csv``: one row per converted labelled case, written by the conversion and read by every later
step; ``test_cases.csv``, the test images' table in the same format, written by the test images' conversion.

Columns ``case_id,split,subtype,image,mask``: ``split`` is train or validation (``case_table.csv``) or test
(``test_cases.csv``); ``subtype`` and ``mask`` are empty for test cases; ``image`` and ``mask`` are paths relative
to the folder of the converted images: the raw nnU-Net dataset folder, or the test images' folder.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from pancreas_mtl.data.tables import read_checked_csv

CASE_TABLE_FILE = "case_table.csv"
CASE_TABLE_COLUMNS = ("case_id", "split", "subtype", "image", "mask")


def write_case_table(path: str | Path, rows: list[dict[str, str]]) -> Path:
    path = Path(path)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CASE_TABLE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_case_table(path: str | Path) -> pd.DataFrame:
    """The table, checked; ``subtype`` as nullable Int64 (empty for test cases)."""
    return read_checked_csv(
        path,
        "case table",
        "a case table",
        CASE_TABLE_COLUMNS,
        dtype={"case_id": str, "split": str, "subtype": "Int64", "image": str, "mask": str},
        keep_default_na=False,
        na_values={"subtype": [""]},
    )


def case_subtypes(path: str | Path) -> dict[str, int]:
    """case_id -> subtype of every labelled case."""
    table = read_case_table(path)
    labelled = table[table["subtype"].notna()]
    return dict(zip(labelled["case_id"], labelled["subtype"].astype(int)))


def split_cases(path: str | Path, split: str) -> pd.DataFrame:
    """The rows of one split (train, validation, test), in the table's order."""
    table = read_case_table(path)
    return table[table["split"] == split].reset_index(drop=True)


def split_images(path: str | Path, images_folder: str | Path, split: str) -> list[Path]:
    """The image files of one split, as paths under the folder the table's paths are relative to."""
    return [Path(images_folder) / image for image in split_cases(path, split)["image"]]


def case_counts(path: str | Path) -> dict[str, dict[str, int]]:
    """Cases per split and subtype of a case table (``"plain"``: cases of a layout without subtype folders)."""
    table = read_case_table(path)
    counts: dict[str, dict[str, int]] = {}
    for (split, subtype), n in table.groupby(["split", "subtype"], dropna=False).size().items():
        counts.setdefault(str(split), {})["plain" if pd.isna(subtype) else str(subtype)] = int(n)
    return counts
