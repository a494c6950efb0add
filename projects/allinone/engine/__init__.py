from .aggregators import *  # noqa: F401,F403
from .checkpoint import register_checkpoint_safe_globals
from .ema import TiedExpMomentumEMA, TiedExponentialMovingAverage
from .hooks import AugBranchHook, ProgressBarHook, RandomStateHook
from .layer_decay import AllInOneLayerDecayConstructor
from .log_processor import MultiTaskLogProcessor
from .loops import MultiTaskTestLoop, MultiTaskTrainLoop, MultiTaskValLoop
from .model_wrappers import MultiTaskDistributedDataParallel
from .optim_wrappers import MultiTaskAmpOptimWrapper, MultiTaskOptimWrapper
from .tta import MultiTaskTTAModel, use_tta

__all__ = ['AllInOneLayerDecayConstructor', 'AugBranchHook', 'MultiTaskAmpOptimWrapper',
           'MultiTaskDistributedDataParallel', 'MultiTaskLogProcessor', 'MultiTaskOptimWrapper', 'MultiTaskTestLoop',
           'MultiTaskTrainLoop', 'MultiTaskTTAModel', 'MultiTaskValLoop', 'ProgressBarHook', 'RandomStateHook',
           'TiedExpMomentumEMA', 'TiedExponentialMovingAverage', 'register_checkpoint_safe_globals', 'use_tta']
