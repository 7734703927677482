"""The lesion's place in a training batch with region labels (training.labels: regions): nnU-Net's region targets
and its foreground locations, keyed by region, as its preprocessing and transforms make them."""

import numpy as np
import torch
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from pancreas_mtl.data.labels import LABELS, REGION_LABELS, REGIONS_CLASS_ORDER
from pancreas_mtl.training.sampling import lesion_location_key, lesion_voxels_per_sample


def masks(seed: int = 0) -> torch.Tensor:
    """Two (1, 6, 8, 8) label maps of 0/1/2, the second with no lesion."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=(2, 1, 6, 8, 8))
    labels[1][labels[1] == 2] = 1
    return torch.from_numpy(labels)


def test_the_lesion_voxels_of_a_region_batch_are_the_lesion_regions():
    manager = LabelManager(REGION_LABELS, REGIONS_CLASS_ORDER)
    labels = masks()
    to_regions = ConvertSegmentationToRegionsTransform(manager.foreground_regions)
    target = torch.stack([to_regions._apply_to_segmentation(sample) for sample in labels])
    assert target.shape == (2, 2, 6, 8, 8)
    expected = (labels[:, 0] == 2).flatten(1).sum(1)
    assert expected[0] > 0 and expected[1] == 0
    assert torch.equal(lesion_voxels_per_sample(target, manager), expected)
    assert torch.equal(lesion_voxels_per_sample([target, target[:, :, ::2, ::2, ::2]], manager), expected)
    assert torch.equal(lesion_voxels_per_sample(labels, LabelManager(LABELS, None)), expected)


def test_the_lesion_locations_are_found_under_the_lesion_region():
    manager = LabelManager(REGION_LABELS, REGIONS_CLASS_ORDER)
    seg = masks()[0].numpy()
    locations = DefaultPreprocessor._sample_foreground_locations(seg, manager.foreground_regions, seed=0)
    assert set(locations) == {(1, 2), (2,)}
    assert lesion_location_key(locations) == (2,)
    softmax = DefaultPreprocessor._sample_foreground_locations(seg, LabelManager(LABELS, None).foreground_labels)
    assert lesion_location_key(softmax) == 2
