"""IMTL-L: impartial multi-task learning, loss part (Liu et al., ICLR 2021)."""
import math
from typing import Dict, List, Optional

import torch

from ...registry import AGGREGATORS
from ._scalar_optim import ScalarOptimizer
from .base import TaskScalingAggregator, check_number


class LossScales:
    """The learnt log-scales ``s_t`` of IMTL-L, one per task name, with their own optimizer.

    The scaled loss is ``e^{s_t} L_t - s_t``; its derivative in ``s_t`` is ``e^{s_t} L_t - 1``, zero at
    ``e^{s_t} L_t = 1``: the scales drive every scaled loss towards 1. Shared by :class:`IMTLLAggregator`
    and the hybrid :class:`IMTLAggregator`.
    """

    def __init__(self, owner: str, lr: float, optimizer: str, init: float):
        check_number(owner, 'init', init)
        self.opt = ScalarOptimizer(optimizer, lr, owner=owner)
        self.init = float(init)
        self.s: Dict[str, float] = {}

    def scale(self, task: str) -> float:
        return math.exp(self.s.get(task, self.init))

    def step(self, tasks: List[str], losses: List[float]) -> None:
        """One optimizer step on the present tasks' ``s_t`` (a missing task keeps its state)."""
        grads = {}
        for t, loss in zip(tasks, losses):
            self.s.setdefault(t, self.init)
            grads[t] = math.exp(self.s[t]) * float(loss) - 1.0
        self.opt.step(self.s, grads)

    def state_dict(self) -> Dict:
        return dict(s=dict(self.s), optimizer=self.opt.state_dict())

    def load_state_dict(self, state: Dict) -> None:
        self.s = {str(k): float(v) for k, v in state.get('s', {}).items()}
        self.opt.load_state_dict(state.get('optimizer', {}))


@AGGREGATORS.register_module()
class IMTLLAggregator(TaskScalingAggregator):
    """Learnt loss scales: minimise ``sum_t e^{s_t} L_t - s_t`` in the network and in ``s``.

    "Towards Impartial Multi-task Learning" (Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang; ICLR
    2021), the loss-balance part; TorchJD's ``IMTLL`` scalariser. Task t's gradient (shared and own
    parameters) is scaled by ``e^{s_t}`` as its backward ends (streaming: one buffer). After the step
    ``s_t`` takes one optimizer step with the analytic gradient ``e^{s_t} L_t - 1`` (zero when the
    scaled loss is 1, so every task's scaled loss is driven to the same value): the weights of a step
    are the scales of the step before, as if ``s_t`` were parameters in their own group. It is
    uncertainty weighting (``kind='simple'``) with ``s -> -s``.

    Args:
        lr: learning rate of the ``s_t`` update (default 1e-3, as this project's uncertainty weighting).
        optimizer: ``'adam'`` (default) or ``'sgd'``.
        init: initial ``s_t`` (default 0.0: scale 1, the plain sum).

    Departures: the paper trains ``s_t`` with the network's optimizer; here it has its own, and under
    gradient accumulation ``s_t`` is updated at every micro-step (each is aggregated on its own).
    """

    def __init__(self, lr: float = 1e-3, optimizer: str = 'adam', init: float = 0.0, tasks=None):
        super().__init__(tasks)
        self._scales = LossScales('IMTLLAggregator', lr, optimizer, init)
        self.lr, self.optimizer, self.init = float(lr), optimizer, float(init)

    def log_scale(self, task: str) -> float:
        """The current ``s_t`` of ``task``."""
        return self._scales.s.get(task, self.init)

    def task_factor(self, norm, own_norm, loss, task=None):
        return self._scales.scale(task)

    def combine_factors(self, norms, own_norms, factors, losses=None, tasks=None):
        out = super().combine_factors(norms, own_norms, factors, losses, tasks)
        if losses is not None:
            self._scales.step(self.tasks_of_rows(len(factors), tasks), torch.as_tensor(losses).tolist())
        return out

    def next_weights(self, tasks: Optional[List[str]] = None) -> torch.Tensor:
        """The weights the next step will use."""
        tasks = self.tasks if tasks is None else tasks
        return torch.tensor([self._scales.scale(t) for t in tasks], dtype=torch.float64)

    def state_dict(self) -> Dict:
        return self._scales.state_dict()

    def load_state_dict(self, state: Dict) -> None:
        self._scales.load_state_dict(state)
