"""Weight EMA for AllInOne runs: mmengine's ``EMAHook`` with averaged models that update a tied weight once.

``EMAHook`` (mmengine; mmdet's configs use it with ``ExpMomentumEMA``) keeps an averaged copy of the
model, validates and tests with it (it swaps the weights in ``before_val_epoch`` / ``before_test_epoch``
and back after), writes it as the checkpoint's ``state_dict`` (the source weights go to
``ema_state_dict``, which ``--resume`` swaps back) and works unchanged with the multi-task loops,
which call those hooks. One defect matters here: with ``update_buffers=True`` the averaged model
walks ``state_dict()``, which lists a weight shared by several modules once per name (RTMDet's head
convolutions shared across levels, a task head's tied weights), so such a weight moved towards the
source ``k`` times per step instead of once. The two averaged models below are mmengine's and mmdet's
with every tensor averaged exactly once; use them as ``ema_type``:

    custom_hooks = [dict(type='RandomStateHook'),
                    dict(type='EMAHook', ema_type='TiedExpMomentumEMA', momentum=2e-4, update_buffers=True,
                         priority=49)]
"""
from collections import OrderedDict
from typing import Dict

from mmdet.models.layers import ExpMomentumEMA
from mmengine.model import ExponentialMovingAverage
from torch import Tensor

from ..registry import MODELS


def unique_tensors(named: Dict[str, Tensor]) -> 'OrderedDict[str, Tensor]':
    """The entries of ``named`` with tensors that alias an earlier entry's memory left out."""
    seen, out = set(), OrderedDict()
    for name, t in named.items():
        view = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if view not in seen:
            seen.add(view)
            out[name] = t
    return out


@MODELS.register_module()
class TiedExponentialMovingAverage(ExponentialMovingAverage):
    """mmengine's ``ExponentialMovingAverage``; a weight tied under several names is averaged once."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.avg_parameters = unique_tensors(self.avg_parameters)


@MODELS.register_module()
class TiedExpMomentumEMA(ExpMomentumEMA):
    """mmdet's ``ExpMomentumEMA`` (momentum warm-up); a weight tied under several names is averaged once."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.avg_parameters = unique_tensors(self.avg_parameters)
