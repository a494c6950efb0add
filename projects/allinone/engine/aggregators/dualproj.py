"""DualProj: the mean gradient projected onto the dual cone of the task gradients."""
from typing import Dict, Optional

from ...registry import AGGREGATORS
from ._dual_cone import project_weights
from .base import check_number
from .gramian import GramianAggregator
from .upgrad import check_named_tasks, check_preference, preference


@AGGREGATORS.register_module()
class DualProjAggregator(GramianAggregator):
    """Project the mean gradient onto the dual cone ``{d : g_t . d >= 0 for all t}``.

    The projection of Equation 11 of "Gradient Episodic Memory for Continual Learning" (Lopez-Paz
    and Ranzato, NeurIPS 2017), used as a multi-task aggregator by TorchJD (``DualProj``;
    "Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232): ``d = pi(sum_t p_t g_t)``
    with ``p = (1/T, ..., 1/T)``, so ``d`` conflicts with no task and is the mean gradient itself when
    the mean conflicts with none. One T-variable QP on the Gram matrix: ``d = G^T v`` with
    ``v = argmin_{v >= p} v^T K v`` (``_dual_cone.project_weights``). Heads get their plain gradients.
    Unlike UPGrad (which projects each gradient, then averages), a task whose gradient dominates
    the mean can dominate the result.

    Args:
        pref: ``None`` (the mean) or ``{task: weight}``: ``p_t = pref[t] / T`` (tasks not named: ``1 / T``).
        reg_eps: ridge added to the trace-normalised Gram matrix (default 0.0: the exact projection).

    Departures: the QP is solved exactly by non-negative least squares (TorchJD: quadprog with
    ``reg_eps = 1e-4``; set ``reg_eps=1e-4`` to reproduce it).
    """

    def __init__(self, pref: Optional[Dict[str, float]] = None, reg_eps: float = 0.0, tasks=None):
        super().__init__(tasks)
        self.pref = check_preference('DualProjAggregator', pref)
        self.reg_eps = float(check_number('DualProjAggregator', 'reg_eps', reg_eps, low=0))

    def bind(self, tasks):
        super().bind(tasks)
        check_named_tasks('DualProjAggregator', 'pref', self.pref, self.tasks)

    def weights_from_gram(self, K, losses, tasks):
        return project_weights(K, preference(self.pref, tasks), self.reg_eps)
