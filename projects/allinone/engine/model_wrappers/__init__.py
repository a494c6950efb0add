from .multitask_ddp import MultiTaskDistributedDataParallel, TaskGradSync

__all__ = ['MultiTaskDistributedDataParallel', 'TaskGradSync']
