from .aug_branch_hook import AugBranchHook, branch_augments
from .gradsplit_affinity_hook import GradSplitAffinityHook
from .progress_hook import ProgressBarHook
from .random_state_hook import RandomStateHook, preserved_rng
from .recon_search_hook import GradConflictRecorder, ReconSearchHook

__all__ = ['AugBranchHook', 'GradConflictRecorder', 'GradSplitAffinityHook', 'ProgressBarHook', 'RandomStateHook',
           'ReconSearchHook', 'branch_augments', 'preserved_rng']
