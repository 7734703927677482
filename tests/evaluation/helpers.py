"""Helpers shared by the evaluation tests: label images written as real NIfTI files, strict JSON reading."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np


def lps_affine(spacing, origin=(100.0, 50.0, -300.0)) -> np.ndarray:
    """An LPS-oriented affine like the quiz data's: ``diag(-sx, -sy, sz)`` plus an origin."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = origin
    return affine


def write_labels(path, data, affine) -> Path:
    """A uint8 label image with qform and sform set to ``affine``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data, dtype=np.uint8), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def strict_load(path):
    """JSON that must not hold NaN or infinities."""

    def reject(name):
        raise ValueError(f"invalid JSON constant {name}")

    return json.loads(Path(path).read_text(), parse_constant=reject)
