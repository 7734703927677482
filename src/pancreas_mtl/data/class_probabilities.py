"""``class_probabilities.csv``: the predicted subtype probabilities of each case of a prediction folder.

Columns ``case_id,prob_0,prob_1,prob_2,predicted_subtype``; ``predicted_subtype`` is the argmax of the row
(the first class on a tie). Written by prediction next to the masks, read by the metrics, the submission and
the benchmark.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pancreas_mtl.data.labels import SUBTYPES
from pancreas_mtl.data.tables import read_checked_csv
from pancreas_mtl.errors import UserInputError

CLASS_PROBABILITIES_FILE = "class_probabilities.csv"
PROBABILITY_COLUMNS = [f"prob_{k}" for k in SUBTYPES]
CLASS_PROBABILITIES_COLUMNS = ["case_id", *PROBABILITY_COLUMNS, "predicted_subtype"]
#: tolerance on a probability row's sum (CSV files hold rounded values)
ROW_SUM_ATOL = 1e-3
#: two probabilities closer than this count as a tie when checking the predicted_subtype column
TIE_ATOL = 1e-6


def class_probabilities_path(folder: str | Path) -> Path:
    return Path(folder) / CLASS_PROBABILITIES_FILE


def class_probability_table(probabilities: dict[str, np.ndarray]) -> pd.DataFrame:
    """The table of ``{case_id: probabilities}``, sorted by case id."""
    rows = []
    for case_id in sorted(probabilities):
        p = np.asarray(probabilities[case_id], dtype=float)
        rows.append({"case_id": case_id, **dict(zip(PROBABILITY_COLUMNS, p)), "predicted_subtype": int(p.argmax())})
    return pd.DataFrame(rows, columns=CLASS_PROBABILITIES_COLUMNS)


def write_class_probabilities(folder: str | Path, probabilities: dict[str, np.ndarray]) -> Path:
    path = class_probabilities_path(folder)
    class_probability_table(probabilities).to_csv(path, index=False)
    return path


def read_class_probabilities(path: str | Path) -> pd.DataFrame:
    """The table, checked; ``path`` is the CSV file or the prediction folder holding it.

    Fails (UserInputError naming the file) on missing columns, duplicate case ids, probabilities that
    are not numbers in [0, 1] or whose rows do not sum to 1, and a ``predicted_subtype`` that is not
    the argmax of its row (ties within 1e-6 excepted). ``predicted_subtype`` in the result is the argmax.
    """
    path = Path(path)
    if path.is_dir():
        path = class_probabilities_path(path)
    df = read_checked_csv(path, "class probabilities file", "CSV", CLASS_PROBABILITIES_COLUMNS, dtype={"case_id": str})
    problems = []
    dup = sorted(df.loc[df["case_id"].duplicated(), "case_id"].unique().tolist())
    if dup:
        problems.append(f"duplicate case_id(s): {', '.join(dup[:10])}")
    probs = df[PROBABILITY_COLUMNS].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad_value = ~np.all(np.isfinite(probs) & (probs >= 0) & (probs <= 1), axis=1)
    bad_sum = ~bad_value & (np.abs(np.nan_to_num(probs).sum(axis=1) - 1.0) > ROW_SUM_ATOL)
    for i in np.flatnonzero(bad_value)[:10]:
        problems.append(f"{df['case_id'].iloc[i]}: probabilities are not numbers in [0, 1]")
    for i in np.flatnonzero(bad_sum)[:10]:
        problems.append(f"{df['case_id'].iloc[i]}: probabilities sum to {probs[i].sum():.6g}, not 1")
    if not problems:
        argmax = np.argmax(probs, axis=1)
        stated = pd.to_numeric(df["predicted_subtype"], errors="coerce").to_numpy(dtype=float)
        for i in range(len(df)):
            s = stated[i]
            ok = (
                np.isfinite(s)
                and s in SUBTYPES
                and (int(s) == argmax[i] or probs[i, int(s)] >= probs[i].max() - TIE_ATOL)
            )
            if not ok:
                problems.append(
                    f"{df['case_id'].iloc[i]}: predicted_subtype {df['predicted_subtype'].iloc[i]!r} "
                    f"is not the argmax ({argmax[i]}) of its probabilities"
                )
    if problems:
        raise UserInputError(f"{path}: invalid class probabilities", problems)
    out = df[["case_id"]].copy()
    for k, col in enumerate(PROBABILITY_COLUMNS):
        out[col] = probs[:, k]
    out["predicted_subtype"] = np.argmax(probs, axis=1).astype(int)
    return out.reset_index(drop=True)
