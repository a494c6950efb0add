"""The backbone placed inside each task's own OpenMMLab model."""
from typing import Sequence, Tuple

import torch
from mmengine.model import BaseModule
from mmengine.registry import MODELS as ROOT_MODELS


@ROOT_MODELS.register_module()
class SharedFeatures(BaseModule):
    """Hands the shared backbone's feature maps to a task model unchanged.

    Each task keeps a complete detector / segmentor / classifier of its own library, so its
    ``loss``/``predict`` (necks, heads, query selection, test-time post-processing) run exactly
    as upstream; only its backbone is this pass-through, fed with the output of the one shared
    backbone. ``in_indices`` picks which levels the task sees (default: all). Registered in
    mmengine's root registry so every library's child registry finds it.
    """

    def __init__(self, in_indices: Sequence[int] = None, init_cfg=None):
        super().__init__(init_cfg)
        self.in_indices = None if in_indices is None else tuple(in_indices)

    def forward(self, feats) -> Tuple[torch.Tensor, ...]:
        if isinstance(feats, torch.Tensor):
            raise TypeError('SharedFeatures expects the tuple of feature maps of the shared backbone, '
                            'got a single tensor: call the task model through AllInOneModel.')
        feats = tuple(feats)
        if self.in_indices is None:
            return feats
        return tuple(feats[i] for i in self.in_indices)
