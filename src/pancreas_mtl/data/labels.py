"""The quiz's label and subtype constants: the one place every other module takes them from.

Masks hold 0 background, 1 pancreas, 2 lesion; the whole pancreas is every labelled voxel (label > 0). Each
labelled case has one lesion subtype, 0, 1 or 2.
"""

from __future__ import annotations

BACKGROUND_LABEL = 0
PANCREAS_LABEL = 1
LESION_LABEL = 2
#: nnU-Net's ``dataset.json`` ``labels`` entry
LABELS = {"background": BACKGROUND_LABEL, "pancreas": PANCREAS_LABEL, "lesion": LESION_LABEL}
MASK_LABELS: tuple[int, ...] = (BACKGROUND_LABEL, PANCREAS_LABEL, LESION_LABEL)
#: ``training.labels``: softmax (one output per label) or regions (nnU-Net's region-based training: overlapping
#: sigmoid outputs, as for BraTS)
LABEL_MODES = ("softmax", "regions")
#: the regions' ``dataset.json`` ``labels`` entry, in output-channel order: the whole pancreas {1, 2}, then the lesion
#: {2}; the masks on disk keep labels 0/1/2
REGION_LABELS = {
    "background": BACKGROUND_LABEL,
    "whole_pancreas": [PANCREAS_LABEL, LESION_LABEL],
    "lesion": [LESION_LABEL],
}
#: the label each region's channel writes when outputs become a label map, later ones over earlier ones
REGIONS_CLASS_ORDER = [PANCREAS_LABEL, LESION_LABEL]

SUBTYPES: tuple[int, ...] = (0, 1, 2)
NUM_SUBTYPES = len(SUBTYPES)
