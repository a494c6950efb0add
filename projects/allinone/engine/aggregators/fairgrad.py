"""FairGrad: alpha-fair resource allocation across tasks (Ban and Ji, ICML 2024)."""
import logging
import math
from typing import Dict, Optional, Tuple

import numpy as np
from mmengine.logging import print_log

from ...registry import AGGREGATORS
from .base import check_number
from .gramian import GramianAggregator


def _utility(w: np.ndarray, p: float) -> float:
    """``sum_t phi(w_t)`` with ``phi' = w^(-p)``: ``log w`` for ``p = 1``, ``w^(1-p) / (1-p)`` otherwise."""
    if p == 1.0:
        return float(np.sum(np.log(w)))
    return float(np.sum(w ** (1.0 - p)) / (1.0 - p))


def fair_weights(K: np.ndarray, alpha: float, tol: float = 1e-8, max_iter: int = 100
                 ) -> Tuple[Optional[np.ndarray], float, int]:
    """``w > 0`` with ``K w = w^(-1/alpha)``: ``(w, residual, iterations)``; ``w`` None when not reached.

    The equation is the stationarity condition of the strictly convex
    ``f(w) = w^T K w / 2 - sum_t phi(w_t)`` (``phi' = w^(-1/alpha)``) on ``w > 0``, minimised by damped
    Newton steps (Hessian ``K + diag(w^(-1/alpha - 1) / alpha)``, positive definite) that stay inside
    ``w > 0``, with an Armijo backtracking on ``f``. It runs on ``K`` divided by its largest diagonal
    entry; with ``K = c K'``, the solution of ``K' w' = w'^(-1/alpha)`` gives ``w = c^(-alpha/(alpha+1)) w'``
    exactly. Accepted when ``max_t |w_t^(1/alpha) (K w)_t - 1| <= tol``. No solution exists when a
    non-negative combination of the gradients is zero (e.g. two opposite gradients).
    """
    T = len(K)
    c = float(np.max(np.diag(K)))
    if not (math.isfinite(c) and c > 0):
        return None, math.inf, 0
    A = K / c
    p = 1.0 / alpha
    w = np.ones(T)
    residual = math.inf
    for it in range(max_iter + 1):
        Aw = A @ w
        residual = float(np.max(np.abs(w ** p * Aw - 1.0)))
        if residual <= tol:
            return w * c ** (-alpha / (alpha + 1.0)), residual, it
        if it == max_iter:
            break
        grad = Aw - w ** (-p)
        H = A + np.diag(p * w ** (-p - 1.0))
        try:
            step = np.linalg.solve(H, grad)
        except np.linalg.LinAlgError:
            break
        t = 1.0
        shrink = step > 0
        if np.any(shrink):  # stay inside w > 0
            t = min(1.0, 0.99 * float(np.min(w[shrink] / step[shrink])))
        f0 = 0.5 * w @ Aw - _utility(w, p)
        decrease = float(grad @ step)
        while t > 1e-14:
            w_new = w - t * step
            if 0.5 * w_new @ A @ w_new - _utility(w_new, p) <= f0 - 1e-4 * t * decrease:
                break
            t *= 0.5
        else:
            break
        w = w_new
        if not np.all(np.isfinite(w)) or np.max(w) > 1e150:
            break
    return None, residual, it


@AGGREGATORS.register_module()
class FairGradAggregator(GramianAggregator):
    """Task weights from alpha-fair utility maximisation: ``K w = w^(-1/alpha)``.

    "Fair Resource Allocation in Multi-Task Learning" (Ban and Ji, ICML 2024, arXiv 2402.15638):
    task t's utility of the update ``d`` is its loss decrease ``g_t . d``; FairGrad maximises the
    alpha-fair sum ``sum_t (g_t . d)^(1 - alpha) / (1 - alpha)`` over a ball. The optimum is
    ``d = sum_t w_t g_t`` with ``(K w)_t = g_t . d = w_t^(-1/alpha)``. ``alpha -> 0`` is the plain sum
    (utilitarian), ``alpha = 1`` proportional fairness (exactly Nash-MTL's equation ``K w = 1 / w``),
    ``alpha -> infinity`` max-min fairness (every ``g_t . d`` equal). As the official code
    (OptMN-Lab/fairgrad, ``methods/weight_methods.py``): the shared gradient is ``T sum_t w_t g_t``
    ("to match the sum loss"), then clipped to ``max_norm``; heads get their plain gradients (each
    task's loss is back-propagated unweighted). ``weights`` include the factor T and the clip.

    Args:
        alpha: the fairness parameter, > 0 (default 2.0, the official scripts' value on all of NYUv2,
            Cityscapes, CelebA and QM9; LibMTL's default is 1.0).
        max_norm: clip of the combined shared gradient (default 1.0 as the official code; 0: none),
            before (and in addition to) the optim wrapper's ``clip_grad``.
        tol: accepted residual ``max_t |w_t^(1/alpha) (K w)_t - 1|`` (default 1e-8).
        max_iter: Newton iterations (default 100).

    Solver: damped Newton on the convex problem whose stationarity is the equation
    (:func:`fair_weights`) instead of the official ``scipy.optimize.least_squares`` from ``1/T``, whose
    result the official code uses without checking convergence. When there is no solution (zero is a
    non-negative combination of the gradients) or the solver does not reach ``tol``: a warning,
    ``fallbacks`` is incremented (kept in the state dict, logged as ``aggregator.fallbacks``) and the
    last good ``w`` of each task is used (1 for a task that has none), as this project's Nash-MTL.

    Departures: a task whose shared gradient is exactly zero has no utility: it is left out of the
    equation and gets weight 0.
    """

    def __init__(self, alpha: float = 2.0, max_norm: float = 1.0, tol: float = 1e-8, max_iter: int = 100,
                 tasks=None):
        super().__init__(tasks)
        check_number('FairGradAggregator', 'alpha', alpha, low=0, low_open=True)
        check_number('FairGradAggregator', 'max_norm', max_norm, low=0)  # 0: no clip
        check_number('FairGradAggregator', 'tol', tol, low=0, high=1, low_open=True, high_open=True)
        check_number('FairGradAggregator', 'max_iter', max_iter, low=1, integer=True)
        self.alpha = float(alpha)
        self.max_norm = float(max_norm)
        self.tol = float(tol)
        self.max_iter = max_iter
        self.fallbacks = 0
        self._last: Dict[str, float] = {}   # last good w per task name

    def solution(self, K: np.ndarray, tasks) -> np.ndarray:
        """The solution ``w`` of the fairness equation (0 for a zero gradient), or the fallback."""
        w = np.zeros(len(K))
        active = np.flatnonzero(np.diag(K) > 0)
        names = [tasks[i] for i in active]
        if len(active):
            sol, residual, iters = fair_weights(K[np.ix_(active, active)], self.alpha, self.tol, self.max_iter)
            if sol is None:
                self.fallbacks += 1
                sol = np.array([self._last.get(t, 1.0) for t in names])
                print_log(f'FairGradAggregator: no solution of K w = w^(-1/alpha) for tasks {names} (residual '
                          f'{residual:.3g} after {iters} Newton steps); using the last good weights '
                          f'{dict(zip(names, sol.tolist()))} ({self.fallbacks} fallbacks so far)',
                          logger='current', level=logging.WARNING)
            else:
                self._last.update(zip(names, sol.tolist()))
            w[active] = sol
        return w

    def weights_from_gram(self, K, losses, tasks):
        weights = len(K) * self.solution(K, tasks)
        if self.max_norm > 0:
            norm = math.sqrt(max(float(weights @ K @ weights), 0.0))
            weights = weights * min(1.0, self.max_norm / (norm + 1e-6))
        return weights

    def state_dict(self):
        return dict(last=dict(self._last), fallbacks=int(self.fallbacks))

    def load_state_dict(self, state):
        self._last = {str(k): float(v) for k, v in state.get('last', {}).items()}
        self.fallbacks = int(state.get('fallbacks', 0))
