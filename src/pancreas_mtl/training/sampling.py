"""What the training patches hold: lesion-centred crops and the lesion voxels of each sample.

nnU-Net's loader forces foreground in a patch by centring it on a voxel of a foreground class that it picks at
random among the classes present in the case (``class_locations``). :class:`LesionCentredSampling` wraps the
training dataset so that, for a configurable share of the cases it loads, only the lesion's locations are
offered: a forced-foreground crop then centres on the lesion. Random crops ignore the locations, so they are
unchanged, and so is every other part of nnU-Net's sampling.
"""

from __future__ import annotations

import numpy as np
import torch

from pancreas_mtl.data.labels import LESION_LABEL
from pancreas_mtl.inference.lesion_prior import lesion_output_channel


def lesion_location_key(class_locations: dict):
    """The key of the lesion in nnU-Net's ``class_locations`` (label 2, or the lesion-only region ``(2,)``)."""
    for key in (LESION_LABEL, (LESION_LABEL,)):
        if key in class_locations:
            return key
    return None


class LesionCentredSampling:
    """A training dataset whose cases offer only their lesion's locations with probability ``share``."""

    def __init__(self, dataset, share: float):
        if not 0 <= share <= 1:
            raise ValueError(f"lesion-centred share must be in [0, 1], got {share}")
        self.dataset = dataset
        self.share = share
        self.identifiers = dataset.identifiers

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("dataset", "share", "identifiers"):
            raise AttributeError(name)  # not set yet (unpickling): never recurse into __getattr__
        return getattr(self.dataset, name)

    def load_case(self, identifier: str):
        data, seg, seg_prev, properties = self.dataset.load_case(identifier)
        locations = properties.get("class_locations") or {}
        key = lesion_location_key(locations)
        # the draw runs in the loader's process, from the numpy stream nnU-Net's own sampling uses
        if key is not None and len(locations[key]) > 0 and np.random.uniform() < self.share:
            properties = {**properties, "class_locations": {key: locations[key]}}
        return data, seg, seg_prev, properties


def lesion_voxels_per_sample(target: torch.Tensor | list[torch.Tensor], label_manager) -> torch.Tensor:
    """Lesion voxels in each sample of a training batch's full-resolution target (labels or regions)."""
    full = target[0] if isinstance(target, (list, tuple)) else target
    if label_manager.has_regions:
        lesion = full[:, lesion_output_channel(label_manager)] > 0
    else:
        lesion = full[:, 0] == LESION_LABEL
    return lesion.flatten(1).sum(1)
