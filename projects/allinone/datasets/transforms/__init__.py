from .albu import AlbuAugment
from .multi_branch import MultiBranchAugment

__all__ = ['AlbuAugment', 'MultiBranchAugment']
