"""ConFIG: conflict-free inverse gradients (Liu, Chu and Thuerey, arXiv 2408.11104)."""
import math
from typing import Dict, Optional

import numpy as np

from ...registry import AGGREGATORS
from .base import check_number
from .gramian import GramianAggregator
from .upgrad import check_named_tasks, check_preference


@AGGREGATORS.register_module()
class ConFIGAggregator(GramianAggregator):
    """The direction with the same cosine to every task gradient, as long as their projections on it.

    "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks" (Liu, Chu and
    Thuerey, arXiv 2408.11104), Equation 2: with ``U`` the matrix of unit task gradients
    ``u_t = g_t / |g_t|``, the direction is ``g_u = U^+ p`` (``p``: ones), normalised; then
    ``u_t . g_u`` is the same for every task (``U U^+ p = p`` when the gradients are linearly
    independent), so the update conflicts with none. Its length is the sum of the projections,
    ``sum_t g_t . g_u / |g_u|``. All of it is computed on the Gram matrix: ``C = U U^T`` (the cosines),
    ``v = C^+ p``, ``g_u = sum_t v_t u_t``, ``|g_u|^2 = v^T C v``; the weights on the raw gradients are
    ``w_t = length * v_t / (|g_t| |g_u|)``. Heads get their plain gradients (as TorchJD's ``ConFIG``).

    Args:
        pref: ``None`` (``p`` = ones, the paper's equal weighting) or ``{task: weight}`` (tasks not
            named: 1): the targets of ``U g_u = p``, i.e. the relative cosines.
        rcond: relative cut-off of the pseudo-inverse of ``C`` (default 1e-6: eigenvalues below
            ``rcond`` times the largest are treated as 0; float32 gradients give cosines to ~1e-7).

    Departures: the official code (tum-pbs/ConFIG) and TorchJD take the pseudo-inverse of the
    ``T x n`` unit matrix; the Gram form here is the same direction without an n-sized
    decomposition. A task whose shared gradient is exactly zero has no direction: it gets weight 0
    (TorchJD: a zero row of ``U``). The momentum variant (M-ConFIG) is not included.
    """

    def __init__(self, pref: Optional[Dict[str, float]] = None, rcond: float = 1e-6, tasks=None):
        super().__init__(tasks)
        self.pref = check_preference('ConFIGAggregator', pref)
        self.rcond = float(check_number('ConFIGAggregator', 'rcond', rcond, low=0, high=1, high_open=True))

    def bind(self, tasks):
        super().bind(tasks)
        check_named_tasks('ConFIGAggregator', 'pref', self.pref, self.tasks)

    def weights_from_gram(self, K, losses, tasks):
        w = np.zeros(len(K))
        active = np.flatnonzero(np.diag(K) > 0)
        if not len(active):
            return w
        norms = np.sqrt(np.diag(K)[active])
        Ka = K[np.ix_(active, active)]
        C = Ka / np.outer(norms, norms)
        p = np.array([(self.pref or {}).get(tasks[i], 1.0) for i in active])
        v = np.linalg.pinv(C, rcond=self.rcond, hermitian=True) @ p
        dir_norm2 = float(v @ C @ v)
        if not dir_norm2 > 0:
            return w
        unit = v / (norms * math.sqrt(dir_norm2))     # g_u / |g_u| = sum_t unit_t g_t
        length = float((Ka @ unit).sum())             # sum_t g_t . g_u / |g_u|
        w[active] = length * unit
        return w
