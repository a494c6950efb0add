"""Route each sample through exactly one of several augmentation branches."""
from typing import List, Optional, Sequence

import numpy as np
from mmcv.transforms import BaseTransform, Compose
from mmcv.transforms.utils import cache_randomness
from mmengine.registry import TRANSFORMS


@TRANSFORMS.register_module()
class MultiBranchAugment(BaseTransform):
    """Pick one branch per sample (by probability) and apply only that branch.

    Augmentations that conflict, e.g. mosaic-style composition against heavy scale/crop jitter for
    detection, or AutoAugment against random erasing for classification, go to different branches
    so that they never stack on one sample (the multi-branch pipeline of the TBGC solution). Each
    branch is a list of ordinary transform configs of the dataset's own library (built in its scope).
    The chosen branch's name is written to ``results['aug_branch']``.

    Args:
        branches: list of branches, each a list of transform configs (an empty list = identity).
        probs: probability of each branch (normalised; default uniform).
        names: a name per branch for logs and tests (default ``'branch0'``...).
    """

    def __init__(self, branches: Sequence[Sequence[dict]], probs: Optional[Sequence[float]] = None,
                 names: Optional[Sequence[str]] = None):
        if not branches:
            raise ValueError('MultiBranchAugment needs at least one branch')
        probs = [1.0] * len(branches) if probs is None else list(probs)
        if len(probs) != len(branches):
            raise ValueError(f'MultiBranchAugment: {len(branches)} branches but {len(probs)} probs')
        if any(p < 0 for p in probs) or sum(probs) <= 0:
            raise ValueError(f'MultiBranchAugment: probs must be >= 0 with a positive sum, got {probs}')
        names = [f'branch{i}' for i in range(len(branches))] if names is None else list(names)
        if len(names) != len(branches):
            raise ValueError(f'MultiBranchAugment: {len(branches)} branches but {len(names)} names')
        self.branches: List[Compose] = [Compose(list(b)) for b in branches]
        self.probs = np.asarray(probs, dtype=np.float64) / float(sum(probs))
        self.names = names

    @cache_randomness
    def _choose(self) -> int:
        return int(np.random.choice(len(self.branches), p=self.probs))

    def transform(self, results: dict) -> Optional[dict]:
        i = self._choose()
        results = self.branches[i](results)
        if results is not None:
            results['aug_branch'] = self.names[i]
        return results

    def __repr__(self):
        parts = ', '.join(f'{n} (p={p:.2f}): {b!r}' for n, p, b in zip(self.names, self.probs, self.branches))
        return f'{type(self).__name__}({parts})'
