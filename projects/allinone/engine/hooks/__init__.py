from .aug_branch_hook import AugBranchHook, branch_augments
from .progress_hook import ProgressBarHook
from .random_state_hook import RandomStateHook, preserved_rng

__all__ = ['AugBranchHook', 'ProgressBarHook', 'RandomStateHook', 'branch_augments', 'preserved_rng']
