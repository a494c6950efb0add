from .multitask_optim_wrapper import MultiTaskAmpOptimWrapper, MultiTaskOptimWrapper

__all__ = ['MultiTaskAmpOptimWrapper', 'MultiTaskOptimWrapper']
