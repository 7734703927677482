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

SUBTYPES: tuple[int, ...] = (0, 1, 2)
NUM_SUBTYPES = len(SUBTYPES)
