"""GradVac: gradient vaccine (Wang, Tsvetkov, Firat, Cao; ICLR 2021)."""
import math
from typing import Dict

import numpy as np
import torch

from ...registry import AGGREGATORS
from ._gram import random_order
from .base import check_number, check_seed
from .gramian import GramianAggregator

#: a target cosine this close to +-1 cannot be reached by a finite step; the pair is not adjusted
_TARGET_LIMIT = 1e-12


@AGGREGATORS.register_module()
class GradVacAggregator(GramianAggregator):
    """Move each pair's gradient cosine up to an EMA target, not merely to zero as PCGrad does.

    "Gradient Vaccine: Investigating and Improving Multi-task Optimization in Massively Multilingual
    Models" (arXiv 2010.05874), Algorithm 1: for each task i, ``g_i' = g_i``; for every other task
    j in a random order, ``phi = cos(g_i', g_j)``; if ``phi < phi_hat_ij``::

        g_i' += |g_i'| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2))
                / (|g_j| sqrt(1 - phi_hat^2)) * g_j

    which makes ``cos(g_i', g_j) = phi_hat_ij`` exactly; then (always)
    ``phi_hat_ij = (1 - beta) phi_hat_ij + beta phi``. The update is ``sum_i g_i'``. Targets start
    at 0, so the first step is PCGrad. Computed on the Gram matrix with a coefficient matrix, so
    ``weights`` is each task's exact coefficient; heads get their plain gradients (``own_scales`` 1).

    State: ``phi_hat`` per *ordered* task-name pair (i, j) (``phi`` is measured on the already
    adjusted ``g_i'``, so it is not symmetric), kept across a missing task; saved in the checkpoint
    with the state of the method's own generator of the random orders (seeded with ``seed``, the
    same on every rank whatever torch's global RNG does; nothing is drawn with two tasks).

    Args:
        beta: EMA rate of the targets (default 0.01, the paper's), ``0 < beta <= 1``.
        seed: seed of the method's generator of orders (default 0).

    Departures: one group, all shared parameters (the paper also applies it per layer or per
    module); a pair where a gradient is zero is skipped (no cosine), and a target within 1e-12 of
    +-1 (unreachable) leaves the pair unadjusted but still updates the EMA.
    """

    def __init__(self, beta: float = 0.01, seed: int = 0, tasks=None):
        super().__init__(tasks)
        self.beta = float(check_number('GradVacAggregator', 'beta', beta, low=0, high=1, low_open=True))
        self.seed = check_seed('GradVacAggregator', seed)
        self._gen = torch.Generator().manual_seed(seed)
        self._targets: Dict[str, Dict[str, float]] = {}

    def target(self, i: str, j: str) -> float:
        return self._targets.get(i, {}).get(j, 0.0)

    def coefficients(self, K: np.ndarray, tasks) -> np.ndarray:
        """``C`` with ``g_i' = C[i] @ G`` (``K = G G^T``); updates the targets of the pairs met."""
        T = len(K)
        norms = np.sqrt(np.clip(np.diag(K), 0.0, None))
        C = np.eye(T)
        for i in range(T):
            for j in random_order(T, i, self._gen):
                norm_i = math.sqrt(max(float(C[i] @ K @ C[i]), 0.0))
                if norm_i <= 0 or norms[j] <= 0:
                    continue
                phi = min(1.0, max(-1.0, float(C[i] @ K[:, j]) / (norm_i * norms[j])))
                target = self.target(tasks[i], tasks[j])
                if phi < target and 1.0 - target ** 2 > _TARGET_LIMIT:
                    root_t = math.sqrt(1.0 - target ** 2)
                    C[i, j] += norm_i * (target * math.sqrt(1.0 - phi ** 2) - phi * root_t) / (norms[j] * root_t)
                self._targets.setdefault(tasks[i], {})[tasks[j]] = float((1 - self.beta) * target + self.beta * phi)
        return C

    def weights_from_gram(self, K, losses, tasks):
        return self.coefficients(K, tasks).sum(0)

    def state_dict(self):
        return dict(targets={i: dict(row) for i, row in self._targets.items()}, generator=self._gen.get_state())

    def load_state_dict(self, state):
        self._targets = {str(i): {str(j): float(v) for j, v in row.items()}
                         for i, row in state.get('targets', {}).items()}
        if 'generator' in state:
            self._gen.set_state(state['generator'])
