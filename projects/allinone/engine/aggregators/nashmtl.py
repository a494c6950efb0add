"""Nash-MTL: multi-task learning as a bargaining game (Navon et al., ICML 2022)."""
import logging
from typing import Dict, Optional

import numpy as np
from mmengine.logging import print_log
from scipy.optimize import minimize

from ...registry import AGGREGATORS
from .base import check_number
from .gramian import GramianAggregator


@AGGREGATORS.register_module()
class NashMTLAggregator(GramianAggregator):
    """The Nash bargaining solution: ``alpha > 0`` with ``(G G^T alpha)_t = 1 / alpha_t``.

    "Multi-Task Learning as a Bargaining Game" (Navon, Shamsian, Achituve, Maron, Kawaguchi,
    Chechik, Fetaya; ICML 2022, arXiv 2202.01017): the update ``d = sum_t alpha_t g_t`` maximises
    ``sum_t log(d . g_t)`` over a ball; its weights solve ``K alpha = 1 / alpha`` (K the Gram
    matrix), i.e. ``d . g_t = 1 / alpha_t`` for every task. Like the paper's code, the weighted loss
    ``sum_t alpha_t L_t`` is what is back-propagated: shared weights and head scales are both
    ``alpha``; then the *shared* gradient is clipped to ``max_norm`` (``weights`` include the clip
    factor, ``own_scales`` do not).

    Solver (the official code runs 20 convex-concave iterations of cvxpy/ECOS): ``K alpha = 1/alpha``
    is the stationarity condition of the strictly convex ``f(alpha) = alpha^T K alpha / 2 -
    sum_t log alpha_t``; it is minimised with scipy's ``trust-exact`` in ``z = log alpha``
    (unconstrained; the z-gradient ``alpha * K alpha - 1`` is the residual itself), on K divided by
    its Frobenius norm for conditioning (rescaled back exactly), warm-started from the last alpha.
    A solution is accepted when ``max_t |alpha_t (K alpha)_t - 1| <= tol``. None exists when zero
    is in the convex hull of the gradients (e.g. two opposite gradients): then, and on any solver
    error, a warning is logged, ``fallbacks`` (also in the state dict) is incremented and the last
    good alpha of each task is used (1 for a task that has none) -- never a silent fallback.

    Args:
        update_weights_every: solve every this many steps and reuse alpha between (default 1). A
            task with no alpha yet forces a solve.
        max_norm: clip of the combined shared gradient (default 1.0 as the paper's code; 0: none).
            It comes before (and in addition to) the optim wrapper's ``clip_grad``.
        tol: accepted residual ``max_t |alpha_t (K alpha)_t - 1|`` (default 1e-5; the paper's code stops
            its iterations at a residual norm of 1e-3).
        max_iter: solver iterations (default 100).

    Departures: the official code divides the Gram matrix by its Frobenius norm and uses the alpha
    of that normalised problem as the weights, i.e. ``sqrt(||K||_F)`` times the alpha of the raw
    Gram matrix solved here (the paper's equation). The shared update's direction is the same, and
    its length too whenever the ``max_norm`` clip binds; the heads, scaled by alpha and not clipped,
    get ``1 / sqrt(||K||_F)`` of the official code's step (smaller when the gradients are large, larger
    when they are small), and so does the shared update when the clip does not bind. A task whose
    shared gradient is exactly zero has no utility (``log 0``): it is left out of the solve; its
    shared weight is 0 and its head gets the mean alpha of the others.
    """

    def __init__(self, update_weights_every: int = 1, max_norm: float = 1.0, tol: float = 1e-5,
                 max_iter: int = 100, tasks=None):
        super().__init__(tasks)
        owner = 'NashMTLAggregator'
        check_number(owner, 'update_weights_every', update_weights_every, low=1, integer=True)
        check_number(owner, 'max_norm', max_norm, low=0)  # 0: no clip
        check_number(owner, 'tol', tol, low=0, low_open=True)
        check_number(owner, 'max_iter', max_iter, low=1, integer=True)
        self.update_weights_every = update_weights_every
        self.max_norm = float(max_norm)
        self.tol = float(tol)
        self.max_iter = max_iter
        self.fallbacks = 0
        self._step = 0
        self._alpha: Dict[str, float] = {}   # last good alpha per task name

    # ------------------------------------------------------------------ solver
    def solve(self, K: np.ndarray, start: Optional[np.ndarray] = None):
        """``alpha > 0`` with ``K alpha = 1 / alpha``; returns ``(alpha, residual, message)``.

        ``alpha`` is None when no acceptable solution was found.
        """
        scale = float(np.linalg.norm(K))
        if not (np.isfinite(scale) and scale > 0):
            return None, float('inf'), 'Gram matrix is zero or not finite'
        A = K / scale
        root = np.sqrt(scale)
        if start is None or not np.all(np.isfinite(start)) or np.any(start <= 0):
            beta0 = 1.0 / np.sqrt(np.diag(A))   # exact for orthogonal gradients
        else:
            beta0 = np.asarray(start, dtype=np.float64) * root

        def fun(z):
            b = np.exp(z)
            Ab = A @ b
            return 0.5 * float(b @ Ab) - float(z.sum()), b * Ab - 1.0

        def hess(z):
            b = np.exp(z)
            return A * np.outer(b, b) + np.diag(b * (A @ b))

        try:
            with np.errstate(over='ignore', invalid='ignore'):
                res = minimize(fun, np.log(beta0), jac=True, hess=hess, method='trust-exact',
                               options=dict(gtol=self.tol * 1e-2, maxiter=self.max_iter))
                beta = np.exp(res.x)
                residual = float(np.max(np.abs(beta * (A @ beta) - 1.0)))
        except Exception as err:  # noqa: BLE001 -- any solver error is reported and counted by the caller
            return None, float('inf'), f'solver error {type(err).__name__}: {err}'
        if not (np.all(np.isfinite(beta)) and np.all(beta > 0) and residual <= self.tol):
            return None, residual, str(getattr(res, 'message', ''))
        return beta / root, residual, str(res.message)

    # ------------------------------------------------------------------ aggregate
    def weights_from_gram(self, K, losses, tasks):
        T = len(K)
        active = np.flatnonzero(np.diag(K) > 0)
        names = [tasks[i] for i in active]
        alpha = np.zeros(T)
        if len(active):
            due = self._step % self.update_weights_every == 0 or any(t not in self._alpha for t in names)
            if due:
                known = all(t in self._alpha for t in names)
                start = np.array([self._alpha[t] for t in names]) if known else None
                sol, residual, message = self.solve(K[np.ix_(active, active)], start)
                if sol is None:
                    self.fallbacks += 1
                    sol = np.array([self._alpha.get(t, 1.0) for t in names])
                    print_log(f'NashMTLAggregator: no solution of K alpha = 1/alpha for tasks {names} at step '
                              f'{self._step} (residual {residual:.3g}, {message}); using the last good alpha '
                              f'{dict(zip(names, sol.tolist()))} instead ({self.fallbacks} fallbacks so far)',
                              logger='current', level=logging.WARNING)
                else:
                    self._alpha.update(zip(names, sol.tolist()))
                alpha[active] = sol
            else:
                alpha[active] = [self._alpha[t] for t in names]
        self._step += 1
        head = alpha.copy()
        if len(active) < T:
            fill = float(alpha[active].mean()) if len(active) else 1.0
            head[np.setdiff1d(np.arange(T), active)] = fill
        weights = alpha
        if self.max_norm > 0:
            norm = np.sqrt(max(float(alpha @ K @ alpha), 0.0))
            weights = alpha * min(1.0, self.max_norm / (norm + 1e-6))
        return weights, head

    # ------------------------------------------------------------------ state
    def state_dict(self):
        return dict(step=int(self._step), alpha=dict(self._alpha), fallbacks=int(self.fallbacks))

    def load_state_dict(self, state):
        self._step = int(state.get('step', 0))
        self._alpha = {str(k): float(v) for k, v in state.get('alpha', {}).items()}
        self.fallbacks = int(state.get('fallbacks', 0))
