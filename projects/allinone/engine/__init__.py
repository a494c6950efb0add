from .aggregators import *  # noqa: F401,F403
from .checkpoint import register_checkpoint_safe_globals
from .drmgf import DRMGF, DRMGFTrainLoop
from .hooks import ProgressBarHook, RandomStateHook
from .log_processor import MultiTaskLogProcessor
from .loops import MultiTaskTestLoop, MultiTaskTrainLoop, MultiTaskValLoop
from .model_wrappers import MultiTaskDistributedDataParallel
from .optim_wrappers import MultiTaskAmpOptimWrapper, MultiTaskOptimWrapper

__all__ = ['DRMGF', 'DRMGFTrainLoop', 'MultiTaskAmpOptimWrapper', 'MultiTaskDistributedDataParallel', 'MultiTaskLogProcessor', 'MultiTaskOptimWrapper',
           'MultiTaskTestLoop', 'MultiTaskTrainLoop', 'MultiTaskValLoop', 'ProgressBarHook', 'RandomStateHook',
           'register_checkpoint_safe_globals']
