"""The lesion-presence prior: a predicted mask with no lesion keeps the most probable lesion region at the pancreas.

Every labelled case of the quiz data holds a lesion (all 281 masks hold label 1 and label 2), so a prediction
without any lesion voxel is known to be wrong. The rule, applied to one case's label map and the network's
lesion probability map of the same shape:

1. If the label map already holds the lesion label anywhere, it is returned unchanged: a second lesion is
   never added.
2. The search region is the predicted pancreas (label 1) dilated by one voxel with full connectivity (a 3x3x3
   structuring element in 3D), so a region touching the pancreas counts. If no pancreas is predicted, the
   label map is returned unchanged: there is nothing to anchor a lesion to.
3. The seed is the voxel of highest lesion probability inside the search region (on ties, the first in C
   order, so the result is deterministic); its probability is the peak p*. If p* is not above 0, the
   network gives no lesion evidence to follow and the label map is returned unchanged.
4. The candidates are the voxels inside the search region whose lesion probability is at least
   ``relative_threshold * p*``. The added lesion is the fully connected (26-connected in 3D) component of
   the candidates that holds the seed.
5. Those voxels, pancreas or, on the one-voxel rim, background before, become lesion (label 2). No other
   voxel changes.

Only the bounding box of the search region is worked on, so a large volume with a small pancreas is cheap.
The caller's array is never modified; when nothing changes it is returned as is, without a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pancreas_mtl.data.labels import LESION_LABEL, PANCREAS_LABEL


@dataclass(frozen=True)
class LesionPriorResult:
    #: the label map, the caller's own array when unchanged, else a changed copy of the same shape and dtype
    labels: np.ndarray
    #: how many voxels became lesion; 0 when unchanged
    added_voxels: int
    #: the lesion probability at the seed voxel; nan when unchanged
    peak_probability: float


def _validate(labels: np.ndarray, lesion_probability: np.ndarray, relative_threshold: float) -> None:
    if labels.shape != lesion_probability.shape:
        raise ValueError(
            f"labels shape {labels.shape} differs from lesion_probability shape {lesion_probability.shape}"
        )
    if labels.ndim < 1:
        raise ValueError("labels must have at least one dimension, got a 0-d array")
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.number):
        raise ValueError(f"labels must hold integer label values, got dtype {labels.dtype}")
    if lesion_probability.dtype == np.bool_ or not (
        np.issubdtype(lesion_probability.dtype, np.integer) or np.issubdtype(lesion_probability.dtype, np.floating)
    ):
        raise ValueError(f"lesion_probability must be real numbers, got dtype {lesion_probability.dtype}")
    try:
        threshold = float(relative_threshold)
    except (TypeError, ValueError):
        raise ValueError(f"relative_threshold must be a number in (0, 1], got {relative_threshold!r}") from None
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"relative_threshold must be in (0, 1], got {relative_threshold!r}")
    if np.issubdtype(lesion_probability.dtype, np.floating) and not np.isfinite(lesion_probability).all():
        raise ValueError("lesion_probability holds non-finite values (nan or inf)")


def _unchanged(labels: np.ndarray) -> LesionPriorResult:
    return LesionPriorResult(labels=labels, added_voxels=0, peak_probability=float("nan"))


def apply_lesion_presence_prior(
    labels: np.ndarray, lesion_probability: np.ndarray, *, relative_threshold: float
) -> LesionPriorResult:
    """Add the most probable lesion region at the predicted pancreas when ``labels`` holds no lesion.

    See the module docstring for the rule. Raises ValueError when the shapes differ, ``relative_threshold``
    is not in (0, 1], or ``lesion_probability`` holds nan or inf.
    """
    labels = np.asarray(labels)
    lesion_probability = np.asarray(lesion_probability)
    _validate(labels, lesion_probability, relative_threshold)

    if np.any(labels == LESION_LABEL):
        return _unchanged(labels)
    pancreas = labels == PANCREAS_LABEL
    if not pancreas.any():
        return _unchanged(labels)

    # Bounding box of the pancreas grown by the one-voxel dilation, clipped to the volume.
    box = []
    for axis in range(labels.ndim):
        other_axes = tuple(a for a in range(labels.ndim) if a != axis)
        present = np.flatnonzero(pancreas.any(axis=other_axes))
        box.append(slice(max(int(present[0]) - 1, 0), min(int(present[-1]) + 2, labels.shape[axis])))
    box = tuple(box)

    structure = np.ones((3,) * labels.ndim, dtype=bool)
    search = ndimage.binary_dilation(pancreas[box], structure=structure)
    probability = lesion_probability[box].astype(np.float64)

    # The C order of the box agrees with the volume's, so argmax's first maximum is the volume's first.
    seed = np.unravel_index(int(np.argmax(np.where(search, probability, -np.inf))), search.shape)
    peak = float(probability[seed])
    if not peak > 0.0:
        return _unchanged(labels)

    candidates = search & (probability >= float(relative_threshold) * peak)
    components, _ = ndimage.label(candidates, structure=structure)
    lesion = components == components[seed]

    out = labels.copy()
    out[box][lesion] = LESION_LABEL
    return LesionPriorResult(labels=out, added_voxels=int(lesion.sum()), peak_probability=peak)


def lesion_output_channel(label_manager) -> int:
    """The network output channel of the lesion: label 2 of a softmax output, or the lesion-only region."""
    if not label_manager.has_regions:
        return LESION_LABEL
    for channel, region in enumerate(label_manager.foreground_regions):
        if set(np.atleast_1d(region).tolist()) == {LESION_LABEL}:
            return channel
    raise ValueError(f"no lesion-only region among {label_manager.foreground_regions}")
