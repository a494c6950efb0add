from .grad_sync import GradSync
from .multitask_optim_wrapper import CombinedStep, MultiTaskAmpOptimWrapper, MultiTaskOptimWrapper, TaskGradHook

__all__ = ['CombinedStep', 'GradSync', 'MultiTaskAmpOptimWrapper', 'MultiTaskOptimWrapper', 'TaskGradHook']
