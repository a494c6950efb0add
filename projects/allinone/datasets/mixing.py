"""Mixing augmentations (Mosaic, MixUp) in a flat dataset pipeline, without a dataset wrapper.

mmdet's and mmseg's ``MultiImageMixDataset`` split the pipeline in two: the wrapped dataset's
pipeline loads a sample, the wrapper's pipeline augments it and loads the extra images a mixing
transform asks for through the first part. A dataset with ``MixingPipelineMixin`` does the same
split itself: for each ``MultiBranchAugment`` of its pipeline that has a mixing branch, the
transforms before it are the loading part, and the extra images run through them. Same images,
same random draws, same result as the wrapper; but the dataset config keeps its usual shape
(``data_root``, ``ann_file`` where every tool and override expects them).
"""
from typing import Sequence

import numpy as np
from mmcv.transforms import Compose

from .transforms.multi_branch import MultiBranchAugment


class MixSource:
    """Sample ``i`` of ``dataset`` after the loading part of its pipeline: what a mixing transform
    mixes in. ``len()`` is the dataset's size (the mixing transforms draw indexes from it).

    Args:
        dataset: an mmengine ``BaseDataset`` (``get_data_info``, ``len``).
        transforms: the loading part (transform objects), e.g. LoadImageFromFile, LoadAnnotations.
        max_refetch: a sample the loading part drops (``None``) is replaced by a random other one,
            at most this many times, as mmengine's datasets do.
    """

    def __init__(self, dataset, transforms: Sequence, max_refetch: int = 15):
        self.dataset = dataset
        self.load = Compose(list(transforms))
        self.max_refetch = max_refetch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> dict:
        for _ in range(self.max_refetch + 1):
            data = self.load(self.dataset.get_data_info(int(idx)))
            if data is not None:
                return data
            idx = np.random.randint(len(self.dataset))
        raise RuntimeError(f'{type(self.dataset).__name__}: the loading part of the pipeline '
                           f'({self.load!r}) dropped {self.max_refetch + 1} samples in a row for a mixing transform')


def bind_mixing_transforms(dataset) -> int:
    """Give each ``MultiBranchAugment`` with a mixing branch in ``dataset.pipeline`` its source of extra
    images: the dataset through the transforms before it. Returns how many were bound."""
    transforms = list(getattr(getattr(dataset, 'pipeline', None), 'transforms', None) or [])
    bound = 0
    for k, t in enumerate(transforms):
        if isinstance(t, MultiBranchAugment) and t.mixes:
            t.bind_source(MixSource(dataset, transforms[:k]))
            bound += 1
    return bound


class MixingPipelineMixin:
    """Dataset mixin: after the dataset is built, its pipeline's mixing branches draw their extra
    images from it (``bind_mixing_transforms``). List it before the library dataset class."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        bind_mixing_transforms(self)
