"""Methods that route the tasks inside the shared layers (the model side of the multi-task methods).

* ``context``: :class:`TaskContext`, which task's forward runs (the model sets it, the methods read it);
* ``base``: :class:`RoutingMethod`, the protocol :class:`AllInOneModel` builds its methods through,
  from the ``ROUTING`` registry by config key;
* ``gradsplit``: GradSplit's router (``model.grad_split``) and its affinity hook;
* ``recon``: Recon's per-task layers (``model.recon``), its search hook, report and collapse;
* ``drmgf``: DR-MGF's fusion and its training loop (``train_cfg.type='DRMGFTrainLoop'``).
"""
from .base import RoutingMethod, build_routing
from .context import TaskContext
from .drmgf import DRMGF, DRMGFStateHook, DRMGFTrainLoop
from .gradsplit import GradSplit, GradSplitAffinityHook
from .recon import GradConflictRecorder, Recon, ReconSearchHook, TaskSpecificLayer

__all__ = ['DRMGF', 'DRMGFStateHook', 'DRMGFTrainLoop', 'GradConflictRecorder', 'GradSplit', 'GradSplitAffinityHook',
           'Recon', 'ReconSearchHook', 'RoutingMethod', 'TaskContext', 'TaskSpecificLayer', 'build_routing']
