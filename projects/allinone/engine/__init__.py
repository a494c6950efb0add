from .aggregators import *  # noqa: F401,F403
from .checkpoint import register_checkpoint_safe_globals
from .drmgf import DRMGF, DRMGFTrainLoop
from .ema import TiedExpMomentumEMA, TiedExponentialMovingAverage
from .hooks import RandomStateHook
from .layer_decay import AllInOneLayerDecayConstructor
from .loops import MultiTaskTestLoop, MultiTaskTrainLoop, MultiTaskValLoop
from .model_wrappers import MultiTaskDistributedDataParallel
from .optim_wrappers import MultiTaskAmpOptimWrapper, MultiTaskOptimWrapper
from .tta import AllInOneDetTTAModel, AllInOneSegTTAModel, MultiTaskTTAModel, use_tta

__all__ = ['AllInOneDetTTAModel', 'AllInOneLayerDecayConstructor', 'AllInOneSegTTAModel', 'MultiTaskTTAModel',
           'use_tta', 'DRMGF', 'DRMGFTrainLoop', 'MultiTaskAmpOptimWrapper', 'MultiTaskDistributedDataParallel', 'MultiTaskOptimWrapper',
           'MultiTaskTestLoop', 'MultiTaskTrainLoop', 'MultiTaskValLoop', 'RandomStateHook',
           'TiedExpMomentumEMA', 'TiedExponentialMovingAverage', 'register_checkpoint_safe_globals']
