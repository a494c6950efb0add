from .aggregators import *  # noqa: F401,F403
from .checkpoint import register_checkpoint_safe_globals
from .drmgf import DRMGF, DRMGFTrainLoop
from .hooks import AugBranchHook, RandomStateHook
from .loops import MultiTaskTestLoop, MultiTaskTrainLoop, MultiTaskValLoop
from .model_wrappers import MultiTaskDistributedDataParallel
from .optim_wrappers import MultiTaskAmpOptimWrapper, MultiTaskOptimWrapper

__all__ = ['AugBranchHook', 'DRMGF', 'DRMGFTrainLoop', 'MultiTaskAmpOptimWrapper', 'MultiTaskDistributedDataParallel', 'MultiTaskOptimWrapper',
           'MultiTaskTestLoop', 'MultiTaskTrainLoop', 'MultiTaskValLoop', 'RandomStateHook',
           'register_checkpoint_safe_globals']
