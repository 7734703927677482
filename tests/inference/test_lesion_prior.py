"""The lesion-presence prior, on synthetic label and probability maps."""

import itertools
import math

import numpy as np
import pytest
from scipy import ndimage

from pancreas_mtl.data.labels import BACKGROUND_LABEL, LESION_LABEL, PANCREAS_LABEL
from pancreas_mtl.inference.lesion_prior import (
    LesionPriorResult,
    apply_lesion_presence_prior,
)

SHAPE = (40, 50, 60)
PANCREAS_BOX = (slice(10, 25), slice(15, 35), slice(20, 45))
FULL = np.ones((3, 3, 3), dtype=bool)


def pancreas_labels(dtype=np.uint8):
    labels = np.zeros(SHAPE, dtype=dtype)
    labels[PANCREAS_BOX] = PANCREAS_LABEL
    return labels


def spot(center, sigma=2.0, height=1.0, shape=SHAPE):
    grid = np.indices(shape, dtype=np.float64)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, center))
    return (height * np.exp(-d2 / (2 * sigma**2))).astype(np.float32)


def search_region(labels):
    return ndimage.binary_dilation(labels == PANCREAS_LABEL, structure=FULL)


def test_adds_one_connected_lesion_at_the_bright_spot_inside_the_pancreas():
    labels = pancreas_labels()
    center = (17, 25, 32)
    probability = spot(center) * 0.6 + 0.01
    result = apply_lesion_presence_prior(labels, probability, relative_threshold=0.5)

    assert isinstance(result, LesionPriorResult)
    out = result.labels
    assert out.shape == labels.shape and out.dtype == labels.dtype
    added = out == LESION_LABEL
    assert result.added_voxels == int(added.sum()) > 1
    assert added[center]
    assert result.peak_probability == pytest.approx(float(probability[center]))
    # Exactly the voxels at or above half the peak (a ball well inside the pancreas).
    expected = probability >= 0.5 * probability[center]
    assert np.array_equal(added, expected)
    assert not (added & ~search_region(labels)).any()
    _, n_components = ndimage.label(added, structure=FULL)
    assert n_components == 1
    assert np.array_equal(out[~added], labels[~added])


def test_higher_spot_far_outside_the_pancreas_is_ignored():
    labels = pancreas_labels()
    inside, outside = (17, 25, 32), (35, 5, 5)
    probability = spot(inside, height=0.4) + spot(outside, height=0.95)
    result = apply_lesion_presence_prior(labels, probability, relative_threshold=0.5)

    added = result.labels == LESION_LABEL
    assert added[inside]
    assert not added[outside]
    assert result.peak_probability == pytest.approx(float(probability[inside]))
    assert not (added & ~search_region(labels)).any()
    # The far spot's neighbourhood stays background.
    assert (result.labels[30:40, 0:12, 0:12] == BACKGROUND_LABEL).all()


def test_spot_one_voxel_outside_the_pancreas_is_accepted():
    labels = pancreas_labels()
    rim = (9, 25, 32)  # the pancreas starts at index 10 on axis 0
    assert labels[rim] == BACKGROUND_LABEL
    probability = np.full(SHAPE, 0.01, dtype=np.float32)
    probability[rim] = 0.8
    probability[10, 25, 32] = 0.5  # its pancreas neighbour, above half the peak
    result = apply_lesion_presence_prior(labels, probability, relative_threshold=0.5)

    added = result.labels == LESION_LABEL
    assert result.peak_probability == pytest.approx(0.8)
    assert result.added_voxels == 2
    assert added[rim] and added[10, 25, 32]


def test_spot_two_voxels_outside_the_pancreas_is_not_reached():
    labels = pancreas_labels()
    far = (8, 25, 32)
    probability = np.full(SHAPE, 0.01, dtype=np.float32)
    probability[far] = 0.9
    probability[17, 25, 32] = 0.3
    result = apply_lesion_presence_prior(labels, probability, relative_threshold=0.5)

    added = result.labels == LESION_LABEL
    assert not added[far]
    assert result.peak_probability == pytest.approx(0.3)
    assert result.added_voxels == 1 and added[17, 25, 32]


def test_added_lesion_is_clipped_to_the_one_voxel_rim():
    labels = pancreas_labels()
    edge = (10, 25, 32)  # on the pancreas surface; the bright area reaches several voxels outside
    probability = spot(edge, sigma=3.0)
    result = apply_lesion_presence_prior(labels, probability, relative_threshold=0.5)

    added = result.labels == LESION_LABEL
    assert np.array_equal(added, (probability >= 0.5 * probability[edge]) & search_region(labels))
    assert added[9, 25, 32] and not added[8, 25, 32]
    assert (result.labels[:9] == BACKGROUND_LABEL).all()


def test_existing_lesion_is_returned_unchanged():
    labels = pancreas_labels()
    labels[12, 20, 25] = LESION_LABEL
    probability = spot((20, 30, 40), height=0.99)
    before = labels.copy()
    result = apply_lesion_presence_prior(labels, probability, relative_threshold=0.5)

    assert np.array_equal(result.labels, before)
    assert result.labels is labels  # no needless copy
    assert result.added_voxels == 0
    assert math.isnan(result.peak_probability)


def test_no_pancreas_is_returned_unchanged():
    labels = np.zeros(SHAPE, dtype=np.uint8)
    probability = spot((20, 25, 30), height=0.99)
    result = apply_lesion_presence_prior(labels, probability, relative_threshold=0.5)

    assert np.array_equal(result.labels, labels)
    assert not (result.labels == LESION_LABEL).any()
    assert result.added_voxels == 0
    assert math.isnan(result.peak_probability)


def test_zero_lesion_probability_in_the_search_region_is_returned_unchanged():
    labels = pancreas_labels()
    probability = np.zeros(SHAPE, dtype=np.float32)
    probability[0, 0, 0] = 1.0  # far away
    result = apply_lesion_presence_prior(labels, probability, relative_threshold=0.5)

    assert np.array_equal(result.labels, labels)
    assert result.added_voxels == 0
    assert math.isnan(result.peak_probability)


def test_input_is_not_modified_in_place():
    labels = pancreas_labels()
    probability = spot((17, 25, 32))
    labels_before, probability_before = labels.copy(), probability.copy()
    result = apply_lesion_presence_prior(labels, probability, relative_threshold=0.5)

    assert result.added_voxels > 0
    assert result.labels is not labels
    assert np.array_equal(labels, labels_before)
    assert np.array_equal(probability, probability_before)


def test_lower_threshold_gives_a_superset_region():
    labels = pancreas_labels()
    rng = np.random.default_rng(0)
    probability = (spot((17, 25, 32), sigma=3.0) * 0.7 + rng.uniform(0, 0.2, SHAPE)).astype(np.float32)
    regions = [
        apply_lesion_presence_prior(labels, probability, relative_threshold=t).labels == LESION_LABEL
        for t in (0.95, 0.8, 0.6, 0.4, 0.2)
    ]
    for tighter, looser in itertools.pairwise(regions):
        assert not (tighter & ~looser).any()
        assert looser.sum() >= tighter.sum()
    assert regions[-1].sum() > regions[0].sum()


def test_threshold_one_keeps_only_the_peak_plateau():
    labels = pancreas_labels()
    probability = spot((17, 25, 32))
    result = apply_lesion_presence_prior(labels, probability, relative_threshold=1.0)
    assert result.added_voxels == 1
    assert result.labels[17, 25, 32] == LESION_LABEL


def test_ties_take_the_first_voxel_in_c_order():
    labels = pancreas_labels()
    probability = np.full(SHAPE, 0.01, dtype=np.float32)
    first, second = (12, 30, 40), (20, 18, 22)
    probability[first] = probability[second] = 0.7
    result = apply_lesion_presence_prior(labels, probability, relative_threshold=0.5)

    added = result.labels == LESION_LABEL
    assert added[first] and not added[second]
    assert result.added_voxels == 1


def test_diagonal_neighbours_join_but_a_separate_blob_does_not():
    labels = pancreas_labels()
    probability = np.full(SHAPE, 0.01, dtype=np.float32)
    probability[15, 25, 30] = 0.9
    probability[16, 26, 31] = 0.6  # corner neighbour: 26-connected
    probability[20, 25, 30] = 0.8  # above threshold but separated by low voxels
    result = apply_lesion_presence_prior(labels, probability, relative_threshold=0.5)

    added = result.labels == LESION_LABEL
    assert added[15, 25, 30] and added[16, 26, 31]
    assert not added[20, 25, 30]
    assert result.added_voxels == 2


def test_pancreas_touching_the_volume_border():
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[0:6, 0:8, 52:60] = PANCREAS_LABEL
    probability = spot((0, 0, 59), sigma=1.5)
    result = apply_lesion_presence_prior(labels, probability, relative_threshold=0.5)

    added = result.labels == LESION_LABEL
    assert result.labels.dtype == np.int16
    assert added[0, 0, 59]
    assert np.array_equal(added, (probability >= 0.5 * probability[0, 0, 59]) & search_region(labels))


def test_two_dimensional_maps_use_full_connectivity():
    labels = np.zeros((10, 10), dtype=np.uint8)
    labels[3:7, 3:7] = PANCREAS_LABEL
    probability = np.zeros((10, 10), dtype=np.float64)
    probability[4, 4] = 1.0
    probability[5, 5] = 0.6  # diagonal neighbour
    probability[2, 2] = 0.55  # rim, diagonal to (3,3) which is low: not connected
    result = apply_lesion_presence_prior(labels, probability, relative_threshold=0.5)

    added = result.labels == LESION_LABEL
    assert added[4, 4] and added[5, 5] and not added[2, 2]
    assert result.added_voxels == 2


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(40, 50, 60\).*\(40, 50, 61\)"):
        apply_lesion_presence_prior(pancreas_labels(), np.zeros((40, 50, 61), dtype=np.float32), relative_threshold=0.5)


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.0001, 2.0, float("nan")])
def test_threshold_outside_zero_one_is_rejected(threshold):
    with pytest.raises(ValueError, match=r"relative_threshold must be in \(0, 1\]"):
        apply_lesion_presence_prior(pancreas_labels(), spot((17, 25, 32)), relative_threshold=threshold)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_probabilities_are_rejected(bad):
    probability = spot((17, 25, 32))
    probability[0, 0, 0] = bad
    with pytest.raises(ValueError, match="non-finite"):
        apply_lesion_presence_prior(pancreas_labels(), probability, relative_threshold=0.5)
