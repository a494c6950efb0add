"""Layer-wise learning-rate decay for the shared ViT / Swin backbone of an AllInOneModel.

mmpretrain's ``LearningRateDecayOptimWrapperConstructor`` gives the parameter at depth ``d`` of a
backbone with ``L`` depths (stem 0, block i -> i + 1, the rest ``L - 1``; the backbone's own
``get_layer_depth``) the learning rate ``lr * rate ** (L - 1 - d)``. It asks the *model* for
``get_layer_depth``, which an mmpretrain ``ImageClassifier`` has and an AllInOneModel has not, and it
drops a custom key's ``lr_mult``. This subclass hands it the shared backbone's depth function for the
``backbone.*`` parameters (the tasks' necks and heads, ``tasks.<name>.*``, and a shared ``neck.*`` sit
at the top, at the base learning rate) and applies ``lr_mult`` on top of the decay, so that
``custom_keys={'tasks.det': dict(lr_mult=2.)}`` keeps working. Works with any optim wrapper, the
per-task ``MultiTaskOptimWrapper`` included (it takes the param groups as they are).

    optim_wrapper = dict(type='MultiTaskOptimWrapper', constructor='AllInOneLayerDecayConstructor',
                         optimizer=dict(type='AdamW', lr=2e-4, weight_decay=0.05),
                         paramwise_cfg=dict(layer_decay_rate=0.9, norm_decay_mult=0., bias_decay_mult=0.,
                                            custom_keys={'.pos_embed': dict(decay_mult=0.)}))
"""
import logging
from collections import OrderedDict
from typing import List

from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.logging import print_log
from mmpretrain.engine.optimizers import LearningRateDecayOptimWrapperConstructor
from torch import nn

BACKBONE = 'backbone.'


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class AllInOneLayerDecayConstructor(LearningRateDecayOptimWrapperConstructor):
    """mmpretrain's layer-wise lr decay on AllInOne's ``backbone.*`` / ``tasks.<name>.*`` layout.

    ``paramwise_cfg.layer_decay_rate`` (required): the decay per depth. The other ``paramwise_cfg``
    keys are mmpretrain's (``norm_decay_mult``, ``bias_decay_mult``, ``flat_decay_mult``,
    ``custom_keys`` with ``decay_mult`` and, added here, ``lr_mult``).
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict = None):
        if not paramwise_cfg or 'layer_decay_rate' not in paramwise_cfg:
            raise KeyError('AllInOneLayerDecayConstructor needs optim_wrapper.paramwise_cfg.layer_decay_rate '
                           '(e.g. 0.9; 1.0 = no decay)')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        if self.base_wd is None and paramwise_cfg.get('custom_keys'):
            raise ValueError('AllInOneLayerDecayConstructor: custom_keys need the optimizer\'s weight_decay set '
                             '(mmpretrain applies custom keys only then); set optimizer.weight_decay, 0 included')

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '', get_layer_depth=None,
                   **kwargs) -> None:
        if prefix or get_layer_depth is not None:  # mmpretrain's recursion into the children
            return super().add_params(params, module, prefix, get_layer_depth=get_layer_depth, **kwargs)
        backbone = getattr(module, 'backbone', None)
        depth_of = getattr(backbone, 'get_layer_depth', None)
        if depth_of is None:
            raise TypeError(f'layer-wise lr decay needs a backbone with get_layer_depth (mmpretrain '
                            f'VisionTransformer, SwinTransformer, ...); model.backbone is {type(backbone).__name__}')

        def get_layer_depth(name: str):
            # names outside the backbone (task necks and heads, a shared neck) get the top depth
            return depth_of(name, BACKBONE)

        super().add_params(params, module, prefix, get_layer_depth=get_layer_depth)
        for group in params:
            if 'lr_mult' in group:  # mmpretrain keeps a custom key's settings in the group but not its lr_mult
                group['lr'] *= group['lr_mult']
        self._log_summary(params)

    def _log_summary(self, params: List[dict]) -> None:
        by_depth = OrderedDict()
        for group in sorted(params, key=lambda g: g['layer_id']):
            entry = by_depth.setdefault(group['layer_id'], dict(n=0, lrs=set(), names=[]))
            entry['n'] += 1
            entry['lrs'].add(group['lr'])
            top = group['param_name'].split('.')
            entry['names'].append('.'.join(top[:3] if top[0] == 'backbone' else top[:2]))
        lines = [f"layer-wise lr decay {self.paramwise_cfg['layer_decay_rate']} (base lr {self.base_lr:g}):"]
        for depth, e in by_depth.items():
            names = list(OrderedDict.fromkeys(e['names']))
            shown = ', '.join(names[:4]) + (f', ... ({len(names)} modules)' if len(names) > 4 else '')
            lrs = ', '.join(f'{lr:.3g}' for lr in sorted(e['lrs']))
            lines.append(f'  depth {depth:3d}: lr {lrs}  ({e["n"]} tensors: {shown})')
        print_log('\n'.join(lines), logger='current', level=logging.INFO)
