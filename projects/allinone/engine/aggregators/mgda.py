"""MGDA: multi-task learning as multi-objective optimisation (Sener and Koltun, NeurIPS 2018)."""
import math

import numpy as np

from ...registry import AGGREGATORS
from ._gram import min_norm_weights
from .base import check_choice
from .gramian import GramianAggregator

NORMALIZATIONS = ('none', 'l2', 'loss', 'loss+')


@AGGREGATORS.register_module()
class MGDAAggregator(GramianAggregator):
    """Step along the min-norm point of the convex hull of the task gradients.

    "Multi-Task Learning as Multi-Objective Optimization" (Sener and Koltun, NeurIPS 2018,
    arXiv 1810.04650): ``alpha = argmin_{alpha in simplex} |sum_t alpha_t g_t|^2``; ``d = sum_t
    alpha_t g_t`` is a descent direction for every task (``d . g_t >= |d|^2``), or zero at a
    Pareto-stationary point. The paper's code (intel-isl/MultiObjectiveOptimization) first divides
    each gradient by a normaliser (``normalization``), finds ``alpha`` for the normalised
    gradients, then back-propagates ``sum_t alpha_t L_t``: the shared update is ``sum_t alpha_t
    g_t`` on the *raw* gradients and every task's head is scaled by ``alpha_t``. Both are kept here
    (``weights = own_scales = alpha``); with ``'none'`` the update is exactly the min-norm point.

    MGDA-UB, the paper's fast variant, uses the gradients w.r.t. the shared *representation* of
    one common batch. In AllInOne each task has its own images, so those representation gradients
    do not live in a common space: this class always runs MGDA on the shared *parameter* gradients.

    Args:
        normalization: ``'none'`` (default), ``'l2'`` (divide by ``|g_t|``), ``'loss'`` (by
            ``L_t``) or ``'loss+'`` (by ``L_t |g_t|``), as the paper's ``gradient_normalizers``.

    Departures: ``alpha`` comes from an exact small QP (enumeration of the support sets, see
    ``_gram.min_norm_weights``; SLSQP beyond 10 tasks) instead of the paper's Frank-Wolfe
    iterations. A task whose shared gradient is exactly zero is left out of the QP (the paper would
    return d = 0 for the step: zero is then in the hull); it gets weight 0 and head scale ``1/T``.
    A normaliser that is not positive and finite (e.g. a zero loss) is replaced by 1.
    """

    def __init__(self, normalization: str = 'none', tasks=None):
        super().__init__(tasks)
        self.normalization = check_choice('MGDAAggregator', 'normalization', normalization, NORMALIZATIONS)

    def normalizers(self, K: np.ndarray, losses) -> np.ndarray:
        norms = np.sqrt(np.clip(np.diag(K), 0.0, None))
        loss = np.array([float(x) for x in losses], dtype=np.float64) if losses is not None else np.ones(len(K))
        gn = dict(none=np.ones(len(K)), l2=norms, loss=loss, **{'loss+': loss * norms})[self.normalization]
        return np.array([x if (math.isfinite(x) and x > 0) else 1.0 for x in gn])

    def weights_from_gram(self, K, losses, tasks):
        T = len(K)
        active = np.flatnonzero(np.diag(K) > 0)
        alpha = np.zeros(T)
        head = np.full(T, 1.0 / T)
        if len(active):
            gn = self.normalizers(K, losses)[active]
            Kn = K[np.ix_(active, active)] / np.outer(gn, gn)
            alpha[active] = min_norm_weights(Kn)
            head[active] = alpha[active]
        return alpha, head
