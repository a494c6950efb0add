"""IMTL-G: impartial multi-task learning, gradient part (Liu et al., ICLR 2021)."""
import numpy as np

from ...registry import AGGREGATORS
from .gramian import GramianAggregator


@AGGREGATORS.register_module()
class IMTLGAggregator(GramianAggregator):
    """The combination whose projections on every unit task gradient are equal.

    "Towards Impartial Multi-task Learning" (Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang;
    ICLR 2021): find ``alpha`` with ``sum_t alpha_t = 1`` such that ``d = sum_t alpha_t g_t``
    satisfies ``d . u_1 = d . u_t`` for every t (``u_t = g_t / |g_t|``). The paper's closed form
    ``alpha_{2:T} = g_1 U^T (D U^T)^{-1}`` (rows of D: ``g_1 - g_t``, of U: ``u_1 - u_t``) is this
    T x T linear system, solved here on the Gram matrix: rows ``(u_t - u_1) . g_s`` and a row of
    ones. No sign constraint: an ``alpha_t`` can be negative.

    Heads get their plain gradients (``own_scales`` 1): the paper's loss part (IMTL-L, learnt loss
    scales) is a separate method; IMTL-G alone acts on the shared parameters.

    Departures: the system is solved by least squares, so a degenerate set (two tasks with the same
    gradient direction) gets the minimum-norm solution instead of a singular inverse. A task whose
    shared gradient is exactly zero has no direction: it is left out (weight 0).
    """

    def weights_from_gram(self, K, losses, tasks):
        T = len(K)
        active = np.flatnonzero(np.diag(K) > 0)
        alpha = np.zeros(T)
        m = len(active)
        if m == 1:
            alpha[active] = 1.0
        elif m > 1:
            Ka = K[np.ix_(active, active)]
            Ka = Ka / np.max(np.diag(Ka))
            proj = Ka / np.sqrt(np.diag(Ka))[:, None]     # proj[t, s] = u_t . g_s
            M = np.vstack([proj[1:] - proj[0], np.ones((1, m))])
            rhs = np.zeros(m)
            rhs[-1] = 1.0
            alpha[active] = np.linalg.lstsq(M, rhs, rcond=None)[0]
        return alpha
