"""UPGrad: unconflicting projection of gradients (Quinton and Rey, arXiv 2406.16232)."""
from typing import Dict, List, Optional

import numpy as np

from ...registry import AGGREGATORS
from ._dual_cone import project_weights
from .base import check_number
from .gramian import GramianAggregator


def check_preference(owner: str, pref: Optional[Dict[str, float]]) -> Optional[Dict[str, float]]:
    """``pref`` validated: ``None`` or ``{task: weight}`` with finite weights >= 0."""
    if pref is None:
        return None
    if not isinstance(pref, dict):
        raise ValueError(f'{owner}.pref must be None or a dict {{task: weight}}, got {pref!r}')
    for task, w in pref.items():
        check_number(owner, f'pref[{task!r}]', w, low=0)
    return {str(k): float(v) for k, v in pref.items()}


def check_named_tasks(owner: str, arg: str, mapping, tasks) -> None:
    """A ``{task: value}`` argument names only bound tasks (a typo would silently do nothing)."""
    unknown = sorted(set(mapping or {}) - set(tasks))
    if unknown:
        raise ValueError(f'{owner}.{arg} names tasks {unknown} that the model does not have; tasks: {list(tasks)}')


def preference(pref: Optional[Dict[str, float]], tasks: List[str]) -> np.ndarray:
    """The preference vector of the rows: ``pref[t] / T`` (tasks not named: 1 / T); the mean by default."""
    pref = pref or {}
    return np.array([pref.get(t, 1.0) for t in tasks], dtype=np.float64) / len(tasks)


@AGGREGATORS.register_module()
class UPGradAggregator(GramianAggregator):
    """Project every task gradient onto the dual cone of all of them, then average.

    "Jacobian Descent for Multi-Objective Optimization" (Quinton and Rey, arXiv 2406.16232;
    TorchJD's ``UPGrad``, also in LibMTL): the dual cone ``{d : g_t . d >= 0 for all t}`` holds the
    directions that conflict with no task; ``pi(g_i)`` is the projection of ``g_i`` onto it and the
    update is ``d = sum_i p_i pi(g_i)`` with the preference ``p = (1/T, ..., 1/T)``. So ``d`` never
    conflicts with a task (``g_t . d >= 0``), equals the mean gradient when no pair conflicts, and is
    zero only at a Pareto-stationary point. Each projection is a T-variable QP on the Gram matrix
    (Proposition 1 of the paper, ``_dual_cone.project_weights``): ``pi(g_i) = G^T v_i`` with
    ``v_i = argmin_{v >= e_i} v^T K v``; the weights are ``w = sum_i p_i v_i``. Heads get their plain
    gradients (head scale 1), as with TorchJD's ``mtl_backward``.

    Args:
        pref: ``None`` (the mean, the paper's default) or ``{task: weight}``: task t's projection is
            weighted ``pref[t] / T`` (tasks not named: ``1 / T``).
        reg_eps: ridge added to the trace-normalised Gram matrix (default 0.0: the exact projection).

    Departures: the QPs are solved exactly by non-negative least squares on a square root of the
    Gram matrix (TorchJD: quadprog with ``reg_eps = 1e-4`` added to the normalised Gram matrix,
    which moves the result slightly off the dual cone; set ``reg_eps=1e-4`` to reproduce it).
    """

    def __init__(self, pref: Optional[Dict[str, float]] = None, reg_eps: float = 0.0, tasks=None):
        super().__init__(tasks)
        self.pref = check_preference('UPGradAggregator', pref)
        self.reg_eps = float(check_number('UPGradAggregator', 'reg_eps', reg_eps, low=0))

    def bind(self, tasks):
        super().bind(tasks)
        check_named_tasks('UPGradAggregator', 'pref', self.pref, self.tasks)

    def projections(self, K: np.ndarray, tasks: List[str]) -> np.ndarray:
        """``V[i]``: the weights of ``p_i pi(g_i)`` (row i of the returned ``T x T`` matrix)."""
        return project_weights(K, np.diag(preference(self.pref, tasks)), self.reg_eps)

    def weights_from_gram(self, K, losses, tasks):
        return self.projections(K, tasks).sum(0)
