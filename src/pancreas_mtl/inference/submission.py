"""The handout's submission: subtype_results.csv (Names,Subtype) and a zip with it and every test mask."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd

from pancreas_mtl.errors import UserInputError


def subtype_results(class_probabilities: pd.DataFrame) -> pd.DataFrame:
    """Rows ``quiz_037.nii.gz,0`` sorted by name, from the per-case class probability table."""
    table = pd.DataFrame(
        {
            "Names": [f"{case_id}.nii.gz" for case_id in class_probabilities["case_id"]],
            "Subtype": class_probabilities["predicted_subtype"].astype(int),
        }
    )
    return table.sort_values("Names").reset_index(drop=True)


def write_subtype_results(class_probabilities: pd.DataFrame, out_csv: str | Path) -> Path:
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    subtype_results(class_probabilities).to_csv(out_csv, index=False, lineterminator="\n")
    return out_csv


def make_submission_zip(subtype_csv: str | Path, masks_dir: str | Path, zip_path: str | Path) -> Path:
    """A zip holding subtype_results.csv and one quiz_NNN.nii.gz mask per row of it, written atomically."""
    subtype_csv, masks_dir, zip_path = Path(subtype_csv), Path(masks_dir), Path(zip_path)
    names = pd.read_csv(subtype_csv)["Names"].tolist()
    missing = [n for n in names if not (masks_dir / n).is_file()]
    if missing:
        raise UserInputError(f"{masks_dir}: masks missing for the submission", missing)
    tmp = zip_path.with_name(zip_path.name + ".partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(subtype_csv, "subtype_results.csv")
        for name in names:
            archive.write(masks_dir / name, name)
    tmp.replace(zip_path)
    return zip_path
