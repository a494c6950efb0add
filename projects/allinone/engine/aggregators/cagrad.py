"""CAGrad: conflict-averse gradient descent (Liu, Liu, Jin, Stone, Liu; NeurIPS 2021)."""
import logging

import numpy as np
from mmengine.logging import print_log
from scipy.optimize import minimize

from ...registry import AGGREGATORS
from .base import check_choice, check_number
from .gramian import GramianAggregator


@AGGREGATORS.register_module()
class CAGradAggregator(GramianAggregator):
    """Maximise the worst task's improvement within a ball around the average gradient.

    "Conflict-Averse Gradient Descent for Multi-task Learning" (arXiv 2110.14048). With
    ``g0 = mean_i g_i`` the update ``d`` solves ``max_d min_i g_i . d`` s.t.
    ``|d - g0| <= c |g0|``. Its dual, over the simplex, is
    ``min_w g_w . g0 + c |g0| |g_w|`` with ``g_w = sum_i w_i g_i`` (solved with scipy's SLSQP on
    the Gram matrix, as the authors do), and then ``d = g0 + (c |g0| / |g_w|) g_w``. ``c = 0``
    gives the average gradient; larger ``c`` moves towards the min-norm (MGDA) direction.

    Like the official code (Cranial-XIX/CAGrad, ``cagrad`` + ``overwrite_grad``), ``d`` is then
    divided by the ``rescale`` factor and multiplied by T (``reduction='sum'``) "to match the sum
    loss": with no conflict and ``c = 0`` the update is the sum of the task gradients. Heads get
    their plain gradients (``own_scales`` 1), as in the official code.

    Args:
        c: radius of the ball relative to ``|g0|`` (default 0.4, the paper's NYUv2/Cityscapes value);
            ``c >= 0``.
        rescale: 0: ``d`` as is (the paper's algorithm); 1 (default, official code): ``d / (1 + c^2)``;
            2: ``d / (1 + c)``.
        reduction: ``'sum'`` (default, official code: ``T * d``) or ``'mean'`` (``d`` itself).

    Departures: the dual is solved in float64 on the Gram matrix divided by its largest diagonal
    entry (the solution is scale invariant) with an analytic gradient; a solver result that is not
    finite is replaced by uniform weights with a warning, counted in ``fallbacks``.
    """

    def __init__(self, c: float = 0.4, rescale: int = 1, reduction: str = 'sum', tasks=None):
        super().__init__(tasks)
        check_number('CAGradAggregator', 'c', c, low=0)
        check_choice('CAGradAggregator', 'rescale', rescale, (0, 1, 2))
        check_choice('CAGradAggregator', 'reduction', reduction, ('sum', 'mean'))
        self.c = float(c)
        self.rescale = rescale
        self.reduction = reduction
        self.fallbacks = 0

    def dual_weights(self, A: np.ndarray) -> np.ndarray:
        """The simplex weights ``w`` minimising ``g_w . g0 + c |g0| |g_w|`` (A: Gram matrix)."""
        T = len(A)
        b = np.full(T, 1.0 / T)
        Ab = A @ b
        radius = self.c * np.sqrt(max(float(b @ Ab), 0.0))
        eps = 1e-20

        def fun(x):
            Ax = A @ x
            norm = np.sqrt(max(float(x @ Ax), 0.0) + eps)
            return float(x @ Ab) + radius * norm, Ab + radius * Ax / norm

        res = minimize(fun, b.copy(), jac=True, method='SLSQP', bounds=[(0.0, 1.0)] * T,
                       constraints=[dict(type='eq', fun=lambda x: x.sum() - 1.0, jac=lambda x: np.ones_like(x))],
                       options=dict(ftol=1e-14, maxiter=500))
        w = res.x
        if not np.all(np.isfinite(w)):
            self.fallbacks += 1
            print_log(f'CAGradAggregator: the dual solver returned {w} ({res.message}); uniform weights '
                      f'used this step ({self.fallbacks} fallbacks so far)', logger='current',
                      level=logging.WARNING)
            return b
        w = np.clip(w, 0.0, None)
        return w / w.sum() if w.sum() > 0 else b

    def weights_from_gram(self, K, losses, tasks):
        T = len(K)
        b = np.full(T, 1.0 / T)
        scale = float(np.max(np.diag(K))) if T else 0.0
        coef = b.copy()
        if scale > 0 and self.c > 0:
            A = K / scale
            g0_norm = np.sqrt(max(float(b @ A @ b), 0.0))
            if g0_norm > 0:
                w = self.dual_weights(A)
                gw_norm = np.sqrt(max(float(w @ A @ w), 0.0))
                if gw_norm > 0:
                    coef = b + (self.c * g0_norm / gw_norm) * w
        coef = coef / {0: 1.0, 1: 1.0 + self.c ** 2, 2: 1.0 + self.c}[self.rescale]
        if self.reduction == 'sum':
            coef = coef * T
        return coef

    def state_dict(self):
        return dict(fallbacks=int(self.fallbacks))

    def load_state_dict(self, state):
        self.fallbacks = int(state.get('fallbacks', 0))
