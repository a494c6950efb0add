"""Uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018)."""
import math
from typing import Dict, Optional, Union

import torch

from ...registry import AGGREGATORS
from ._scalar_optim import ScalarOptimizer
from .base import TaskScalingAggregator, check_number

#: (a, b) of the per-task objective ``a exp(-s) L + b s`` with ``s = log sigma^2``
KINDS = dict(simple=(1.0, 1.0), regression=(0.5, 0.5), classification=(1.0, 0.5))


@AGGREGATORS.register_module()
class UncertaintyAggregator(TaskScalingAggregator):
    """Homoscedastic-uncertainty weighting: learn a log-variance ``s_t`` per task.

    The total objective is ``sum_t a_t exp(-s_t) L_t + b_t s_t``, so task t's loss weight is
    ``w_t = a_t exp(-s_t)`` (shared and own gradients alike). Its gradient in ``s_t`` is
    ``b_t - a_t exp(-s_t) L_t``, zero at ``s_t = log(a_t L_t / b_t)``: a task with a large loss gets
    a large ``s_t`` and a small weight. The aggregator owns ``s_t`` (the model is not touched): after
    each step's losses are known (:meth:`combine_factors`) it takes one optimizer step on ``s_t`` with that
    analytic gradient, evaluated at the ``s_t`` the step used. This is what having ``s_t`` as model
    parameters in their own param group (same optimizer, lr ``lr``, no weight decay, not clipped)
    would do; the weights of a step are the ``s_t`` of the step before.

    Reference: A. Kendall, Y. Gal, R. Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses
    for Scene Geometry and Semantics", CVPR 2018.

    The factors (a, b) per ``kind``: ``'simple'`` (1, 1): ``exp(-s) L + s``, the form most code uses
    (e.g. LibMTL), optimum ``s = log L``; ``'regression'`` (1/2, 1/2): the paper's Gaussian
    likelihood ``L / (2 sigma^2) + log sigma``, optimum ``s = log L``, weights half of 'simple';
    ``'classification'`` (1, 1/2): the paper's scaled softmax approximation
    ``L / sigma^2 + log sigma``, optimum ``s = log 2L``.

    Args:
        kind: ``'simple'`` (default), ``'regression'`` or ``'classification'``, or a dict
            ``{task: kind}`` (tasks not named: ``'simple'``).
        init: initial ``s_t`` (default 0.0: weight ``a_t``).
        lr: learning rate of the ``s_t`` update (default 1e-3; with Adam each ``s_t`` moves by about
            ``lr`` per step at most).
        optimizer: ``'adam'`` (default, betas 0.9/0.999, eps 1e-8) or ``'sgd'``.

    Departures: the paper trains ``s_t`` with the network's optimizer; here it has its own, and under
    gradient accumulation ``s_t`` is updated at every micro-step (each is aggregated on its own).
    """

    def __init__(self, kind: Union[str, Dict[str, str]] = 'simple', init: float = 0.0, lr: float = 1e-3,
                 optimizer: str = 'adam', tasks=None):
        super().__init__(tasks)
        kinds = kind if isinstance(kind, dict) else dict(default=kind)
        for name, k in kinds.items():
            if not (isinstance(k, str) and k in KINDS) or not isinstance(name, str):
                raise ValueError(f'UncertaintyAggregator.kind must be one of {sorted(KINDS)} or a dict '
                                 f'{{task: kind}} of them, got {k!r} for {name!r}')
        check_number('UncertaintyAggregator', 'init', init)
        self._opt = ScalarOptimizer(optimizer, lr, owner='UncertaintyAggregator')
        self.kind = kind
        self.init = float(init)
        self.lr = float(lr)
        self.optimizer = optimizer
        self._s: Dict[str, float] = {}

    def bind(self, tasks):
        super().bind(tasks)
        unknown = sorted(set(self.kind) - set(self.tasks)) if isinstance(self.kind, dict) else []
        if unknown:
            raise ValueError(f'UncertaintyAggregator.kind names tasks {unknown} that the model does not have '
                             f'(tasks: {self.tasks})')

    def _ab(self, task):
        kind = self.kind.get(task, 'simple') if isinstance(self.kind, dict) else self.kind
        return KINDS[kind]

    def log_variance(self, task: str) -> float:
        """The current ``s_t = log sigma_t^2`` of ``task``."""
        return self._s.get(task, self.init)

    def task_factor(self, norm, own_norm, loss, task=None):
        a, _ = self._ab(task)
        return a * math.exp(-self.log_variance(task))

    def combine_factors(self, norms, own_norms, factors, losses=None, tasks=None):
        out = super().combine_factors(norms, own_norms, factors, losses, tasks)
        if losses is not None:
            tasks = self.tasks_of_rows(len(factors), tasks)
            grads = {}
            for t, loss in zip(tasks, losses.tolist()):
                a, b = self._ab(t)
                self._s.setdefault(t, self.init)
                grads[t] = b - a * math.exp(-self._s[t]) * loss
            self._opt.step(self._s, grads)
        return out

    def state_dict(self) -> Dict:
        return dict(s=dict(self._s), optimizer=self._opt.state_dict())

    def load_state_dict(self, state: Dict) -> None:
        self._s = {k: float(v) for k, v in state.get('s', {}).items()}
        self._opt.load_state_dict(state.get('optimizer', {}))

    def next_weights(self, tasks: Optional[list] = None) -> torch.Tensor:
        """The weights the next step will use (for logs and tests)."""
        tasks = self.tasks if tasks is None else tasks
        return torch.tensor([self.task_factor(0.0, 0.0, 0.0, t) for t in tasks], dtype=torch.float64)
