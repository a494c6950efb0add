from .gradsplit_affinity_hook import GradSplitAffinityHook
from .progress_hook import ProgressBarHook
from .random_state_hook import RandomStateHook, preserved_rng
from .recon_search_hook import GradConflictRecorder, ReconSearchHook

__all__ = ['GradConflictRecorder', 'GradSplitAffinityHook', 'ProgressBarHook', 'RandomStateHook', 'ReconSearchHook',
           'preserved_rng']
