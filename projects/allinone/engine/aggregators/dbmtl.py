"""DB-MTL: dual-balancing multi-task learning (Lin et al., arXiv 2308.12029)."""
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ...registry import AGGREGATORS
from .base import AggregateResult, GradAggregator, check_number


@AGGREGATORS.register_module()
class DBMTLAggregator(GradAggregator):
    """Balance the loss scales with log losses and the gradient magnitudes by rescaling to the largest.

    "Dual-Balancing for Multi-Task Learning" (Lin et al., arXiv 2308.12029)
    and its code (LibMTL's ``DB_MTL``): loss-scale balancing differentiates ``log(L_t + eps)``, whose
    gradient is ``g_t / (L_t + eps)``; gradient-magnitude balancing keeps an exponential moving average
    ``m_t <- beta_k m_t + (1 - beta_k) g_t / (L_t + eps)`` (``beta_k = beta / k^beta_sigma`` at step k from
    1, ``m_t = 0`` at first) and steps along ``d = sum_t (max_s |m_s| / |m_t|) m_t``: every task's
    averaged log-loss gradient rescaled to the largest norm. Heads get the log-loss gradients
    (head scale ``1 / (L_t + eps)``). ``weights`` (logged) are the coefficients of this step's raw
    gradients in ``d``, ``(max_s |m_s| / |m_t|) (1 - beta_k) / (L_t + eps)``: the rest is the average
    of earlier steps, so ``grad != weights @ grads``.

    Memory: T x n state (one averaged gradient per task, in the shared parameters' dtype and device).
    Cost per step: T in-place updates, T norms and the combination.

    Args:
        beta: averaging factor (default 0.9, LibMTL's).
        beta_sigma: decay of ``beta`` over steps (default 0.0: constant).
        eps: offset of the log (default 1e-8 as the code); a negative loss counts as 0.

    Departures: none in the method; a task missing from a step keeps its average and stays out of
    that step's update and of its largest norm; ``k`` counts aggregated steps.
    """

    combines_rows = False   # the update carries the averages of earlier steps

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8, tasks=None):
        super().__init__(tasks)
        check_number('DBMTLAggregator', 'beta', beta, low=0, high=1, high_open=True)
        check_number('DBMTLAggregator', 'beta_sigma', beta_sigma, low=0)
        check_number('DBMTLAggregator', 'eps', eps, low=0, low_open=True)
        self.beta, self.beta_sigma, self.eps = float(beta), float(beta_sigma), float(eps)
        self._step = 0
        self._m: Dict[str, Tensor] = {}

    def aggregate(self, grads: Tensor, losses: Tensor, own_norms: Optional[Tensor] = None,
                  tasks: Optional[Sequence[str]] = None) -> AggregateResult:
        tasks = self.tasks_of_rows(len(grads), tasks)
        self._step += 1
        beta = self.beta / self._step ** self.beta_sigma
        log_coef = np.array([1.0 / (max(float(x), 0.0) + self.eps) for x in losses])
        for i, t in enumerate(tasks):
            m = self._m.get(t)
            m = torch.zeros_like(grads[i]) if m is None else m.to(grads[i])
            self._m[t] = m.mul_(beta).add_(grads[i], alpha=(1 - beta) * log_coef[i])
        M = [self._m[t] for t in tasks]
        norms = np.array([float(torch.linalg.vector_norm(m)) for m in M])
        alpha = norms.max() / (norms + 1e-8)
        grad = torch.zeros_like(grads[0])
        for m, a in zip(M, alpha):
            grad.add_(m, alpha=float(a))
        return AggregateResult(grad=grad, weights=torch.tensor(alpha * (1 - beta) * log_coef, dtype=grads.dtype),
                               own_scales=torch.tensor(log_coef, dtype=grads.dtype))

    def state_dict(self):
        return dict(step=self._step, m={t: m.clone() for t, m in self._m.items()})

    def load_state_dict(self, state):
        self._step = int(state.get('step', 0))
        self._m = {str(t): m.clone() for t, m in state.get('m', {}).items()}
