"""DR-MGF: task importances per shared connection and meta-weighted fusion of task-dominant updates."""
from .fusion import DRMGF
from .loop import DRMGFStateHook, DRMGFTrainLoop

__all__ = ['DRMGF', 'DRMGFStateHook', 'DRMGFTrainLoop']
