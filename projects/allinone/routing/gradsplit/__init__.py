"""GradSplit (Deng et al., WACV 2023): the router (``model.grad_split``) and the hook that estimates its
task relation during a warm-up (``relation='affinity'``)."""
from .affinity_hook import GradSplitAffinityHook
from .router import GradSplit, load_relation, routed_parameters

__all__ = ['GradSplit', 'GradSplitAffinityHook', 'load_relation', 'routed_parameters']
