"""``lesion_prior.json`` and ``without_lesion_prior/``: what the lesion-presence prior
(:mod:`pancreas_mtl.inference.lesion_prior`) did to a folder of predictions, written by inference and read by the
evaluation."""

from __future__ import annotations

import json
import os
from pathlib import Path

#: What the prior did to a folder of predictions (written beside the masks): see :func:`write_prior_record`.
PRIOR_RECORD_FILE = "lesion_prior.json"
#: The masks the prior changed, as predicted before it (same file names), in this subfolder of the predictions.
WITHOUT_PRIOR_FOLDER = "without_lesion_prior"


def write_prior_record(predictions_dir: str | Path, relative_threshold: float | None, changes: dict[str, dict]) -> Path:
    """``lesion_prior.json``: the threshold (null: prior off) and, per case the prior changed, the voxels it
    added and the peak lesion probability it started from. Written atomically."""
    path = Path(predictions_dir) / PRIOR_RECORD_FILE
    record = {
        "enabled": relative_threshold is not None,
        "relative_threshold": relative_threshold,
        "changed_cases": {
            case: {"added_voxels": int(c["added_voxels"]), "peak_probability": float(c["peak_probability"])}
            for case, c in sorted(changes.items())
            if c["added_voxels"] > 0
        },
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_prior_record(predictions_dir: str | Path) -> dict:
    """The record :func:`write_prior_record` wrote; a folder without one had no prior applied."""
    path = Path(predictions_dir) / PRIOR_RECORD_FILE
    if not path.is_file():
        return {"enabled": False, "relative_threshold": None, "changed_cases": {}}
    return json.loads(path.read_text())
