"""Recon (Shi et al., ICLR 2023): per-task layers (``model.recon``), the search that ranks the shared
layers by gradient conflict, its report, and the collapse into single-task checkpoints."""
from .collapse import collapse_state_dict
from .layers import Recon, TaskSpecificLayer
from .search_hook import GradConflictRecorder, ReconSearchHook

__all__ = ['GradConflictRecorder', 'Recon', 'ReconSearchHook', 'TaskSpecificLayer', 'collapse_state_dict']
