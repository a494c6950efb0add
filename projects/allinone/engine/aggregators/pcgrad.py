"""PCGrad: gradient surgery by projecting conflicting gradients (Yu et al., NeurIPS 2020)."""
from typing import Dict

import numpy as np
import torch

from ...registry import AGGREGATORS
from ._gram import random_order
from .base import check_choice, check_seed
from .gramian import GramianAggregator


@AGGREGATORS.register_module()
class PCGradAggregator(GramianAggregator):
    """Project each task gradient off the normal plane of every gradient it conflicts with.

    Algorithm 1 of "Gradient Surgery for Multi-Task Learning" (Yu, Kumar, Gupta, Levine, Hausman,
    Finn; NeurIPS 2020, arXiv 2001.06782): for each task i, start from ``g_i^PC = g_i`` and, for
    every other task j in a random order, if ``g_i^PC . g_j < 0`` set
    ``g_i^PC -= (g_i^PC . g_j) / |g_j|^2 g_j`` (projections use the *original* ``g_j``). The update
    is ``sum_i g_i^PC``. Without conflicts this is the plain sum. Done here on the ``T x T`` Gram
    matrix with a coefficient matrix ``C`` (``g_i^PC = C[i] @ G``), so ``weights = C.sum(0)`` is
    exactly each task's coefficient on the shared update.

    The random order is drawn per task from a generator the method owns, seeded with ``seed``
    (the same on every rank, so data-parallel replicas project in the same order whatever
    ``randomness.diff_rank_seed`` does to torch's global RNG); its state is saved in the checkpoint,
    so a resumed run continues the same sequence. With two tasks there is nothing to draw. Heads:
    each task's own parameters get its plain gradient (``own_scales`` 1), as in the paper (surgery
    acts on shared parameters only).

    Args:
        reduction: ``'sum'`` (paper, default) or ``'mean'`` of the projected gradients
            (the mean is what some re-implementations, e.g. Pytorch-PCGrad, use).
        seed: seed of the method's generator of projection orders (default 0).

    Departures: none in the arithmetic (the projections are the paper's, done on float64 dot
    products); the official TensorFlow code shuffles once per step for all tasks, here each task
    draws its own order as in the paper's Algorithm 1. A zero gradient is never projected on.
    """

    def __init__(self, reduction: str = 'sum', seed: int = 0, tasks=None):
        super().__init__(tasks)
        self.reduction = check_choice('PCGradAggregator', 'reduction', reduction, ('sum', 'mean'))
        self.seed = check_seed('PCGradAggregator', seed)
        self._gen = torch.Generator().manual_seed(seed)

    def coefficients(self, K: np.ndarray) -> np.ndarray:
        """``C`` with ``g_i^PC = C[i] @ G`` for the Gram matrix ``K = G G^T`` (draws the orders)."""
        T = len(K)
        C = np.eye(T)
        for i in range(T):
            for j in random_order(T, i, self._gen):
                if K[j, j] <= 0:
                    continue
                dot = float(C[i] @ K[:, j])
                if dot < 0:
                    C[i, j] -= dot / K[j, j]
        return C

    def weights_from_gram(self, K, losses, tasks):
        weights = self.coefficients(K).sum(0)
        return weights / len(K) if self.reduction == 'mean' else weights

    def state_dict(self) -> Dict:
        return dict(generator=self._gen.get_state())

    def load_state_dict(self, state: Dict) -> None:
        if 'generator' in state:
            self._gen.set_state(state['generator'])
