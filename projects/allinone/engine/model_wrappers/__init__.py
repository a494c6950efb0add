from .multitask_ddp import MultiTaskDistributedDataParallel, TaskGradSync
from .unwrap import unwrap_model

__all__ = ['MultiTaskDistributedDataParallel', 'TaskGradSync', 'unwrap_model']
