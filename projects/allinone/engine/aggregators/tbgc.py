"""TBGC: task-level backbone-oriented gradient clip (Zhang and Pan, arXiv 2307.03465)."""
import torch

from ...registry import AGGREGATORS
from .base import TaskScalingAggregator, check_choice, check_number

EPS = 1e-6


@AGGREGATORS.register_module()
class TBGCAggregator(TaskScalingAggregator):
    """Clip each task's backbone gradient on its own, bring all to one norm, then sum.

    The default reproduces the winning solution's procedure: after task t's backward,
    ``c_t = min(1, max_norm / (||g_t|| + 1e-6))`` with ``||g_t||`` the norm of the task's gradient on
    the *shared* parameters; all of task t's gradients (shared and its own head) are multiplied by
    ``c_t`` and summed over tasks; no global clip afterwards. With a binding clip (raw norms are
    10-1000x ``max_norm`` in practice) every task reaches the backbone with norm ``max_norm``: the
    "same norm scale" of the paper.

    Args:
        max_norm: per-task clip threshold on the shared gradient norm (0.1 in the paper).
        norm_on: ``'shared'`` (paper) or ``'all'``: measure the task norm on shared + own
            parameters (the authors' ablation arm).
        rescale: ``None`` (paper: clip only) or the common norm every clipped task gradient is
            rescaled to: a number, or ``'min'``/``'mean'``/``'max'`` of the clipped norms. With a
            rescale a task whose clip does not bind is scaled *up* to the common norm.
        own_max_norm: ``None`` (paper: heads scaled by their task's factor) or a number > 0: clip
            each task's head gradient with its own norm and this threshold instead.

    Every threshold must be a finite number > 0: a negative one would turn the heads' (or the
    backbone's) step into gradient ascent, 0 would freeze them, and ``True`` is not a norm.
    """

    def __init__(self, max_norm: float = 0.1, norm_on: str = 'shared', rescale=None,
                 own_max_norm=None, tasks=None):
        super().__init__(tasks)
        owner = 'TBGCAggregator'
        self.max_norm = float(check_number(owner, 'max_norm', max_norm, low=0, low_open=True))
        self.norm_on = check_choice(owner, 'norm_on', norm_on, ('shared', 'all'))
        if rescale is not None and rescale not in ('min', 'mean', 'max'):
            try:
                rescale = float(check_number(owner, 'rescale', rescale, low=0, low_open=True))
            except ValueError:
                raise ValueError(f"{owner}.rescale must be None, a finite number > 0 or 'min'/'mean'/'max', "
                                 f'got {rescale!r}') from None
        self.rescale = rescale
        self.own_max_norm = check_number(owner, 'own_max_norm', own_max_norm, low=0, low_open=True, none_ok=True)
        if self.own_max_norm is not None:
            self.own_max_norm = float(self.own_max_norm)

    def _task_norm(self, norm, own_norm):
        return norm if self.norm_on == 'shared' else (norm ** 2 + own_norm ** 2) ** 0.5

    def task_factor(self, norm, own_norm, loss, task=None):
        clip = min(1.0, self.max_norm / (self._task_norm(norm, own_norm) + EPS))
        if self.rescale is None:
            return clip
        # rescale mode: carry the clipped gradient as a unit vector; common_scale sets its length
        clipped = norm * clip
        return clip / clipped if clipped > 0 else 0.0

    def common_scale(self, norms, own_norms, factors):
        if self.rescale is None:
            return 1.0
        if isinstance(self.rescale, (int, float)):
            return float(self.rescale)
        task_norms = torch.stack([torch.as_tensor(self._task_norm(float(n), float(h)))
                                  for n, h in zip(norms, own_norms)]) if len(norms) else norms
        clipped = (norms * torch.clamp(self.max_norm / (task_norms + EPS), max=1.0))[factors > 0]
        if clipped.numel() == 0:
            return 0.0
        return float(dict(min=clipped.min, mean=clipped.mean, max=clipped.max)[self.rescale]())

    def own_scales(self, factors, scale, own_norms):
        if self.own_max_norm is None:
            return factors * scale
        return torch.clamp(self.own_max_norm / (own_norms + EPS), max=1.0).to(factors)
