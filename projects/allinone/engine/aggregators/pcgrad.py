"""PCGrad: gradient surgery by projecting conflicting gradients (Yu et al., NeurIPS 2020)."""
import numpy as np

from ...registry import AGGREGATORS
from ._gram import gram_matrix, make_result, random_order
from .base import GradAggregator


@AGGREGATORS.register_module()
class PCGradAggregator(GradAggregator):
    """Project each task gradient off the normal plane of every gradient it conflicts with.

    Algorithm 1 of "Gradient Surgery for Multi-Task Learning" (Yu, Kumar, Gupta, Levine, Hausman,
    Finn; NeurIPS 2020, arXiv 2001.06782): for each task i, start from ``g_i^PC = g_i`` and, for
    every other task j in a random order, if ``g_i^PC . g_j < 0`` set
    ``g_i^PC -= (g_i^PC . g_j) / |g_j|^2 g_j`` (projections use the *original* ``g_j``). The update
    is ``sum_i g_i^PC``. Without conflicts this is the plain sum. Done here on the ``T x T`` Gram
    matrix with a coefficient matrix ``C`` (``g_i^PC = C[i] @ G``), so ``weights = C.sum(0)`` is
    exactly each task's coefficient on the shared update.

    The random order is drawn per task from torch's global RNG (``torch.randperm``), so seeded runs
    are reproducible and a resumed run that restores the RNG continues the same sequence; with two
    tasks there is nothing to draw and the RNG is not touched. Heads: each task's own parameters
    get its plain gradient (``head_scales`` 1), as in the paper (surgery acts on shared
    parameters only).

    Args:
        reduction: ``'sum'`` (paper, default) or ``'mean'`` of the projected gradients
            (the mean is what some re-implementations, e.g. Pytorch-PCGrad, use).

    Departures: none in the arithmetic (the projections are the paper's, done on float64 dot
    products); the official TensorFlow code shuffles once per step for all tasks, here each task
    draws its own order as in the paper's Algorithm 1. A zero gradient is never projected on.
    """

    def __init__(self, reduction: str = 'sum', tasks=None):
        super().__init__(tasks)
        if reduction not in ('sum', 'mean'):
            raise ValueError(f"PCGradAggregator.reduction must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction

    @staticmethod
    def coefficients(K: np.ndarray) -> np.ndarray:
        """``C`` with ``g_i^PC = C[i] @ G`` for the Gram matrix ``K = G G^T``."""
        T = len(K)
        C = np.eye(T)
        for i in range(T):
            for j in random_order(T, i):
                if K[j, j] <= 0:
                    continue
                dot = float(C[i] @ K[:, j])
                if dot < 0:
                    C[i, j] -= dot / K[j, j]
        return C

    def aggregate(self, grads, losses, head_norms=None, tasks=None):
        self.row_tasks(len(grads), tasks)  # validates the row count
        T = len(grads)
        weights = self.coefficients(gram_matrix(grads)).sum(0)
        if self.reduction == 'mean':
            weights = weights / T
        return make_result(grads, weights)
