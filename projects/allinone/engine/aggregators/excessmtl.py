"""ExcessMTL: task weights from estimated excess risks (He et al., ICML 2024)."""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ...registry import AGGREGATORS
from ._gram import make_result
from .base import AggregateResult, GradAggregator, check_number


@AGGREGATORS.register_module()
class ExcessMTLAggregator(GradAggregator):
    """Exponentiated-gradient task weights driven by each task's distance to convergence.

    "Robust Multi-Task Learning with Excess Risks" (He et al., ICML 2024, arXiv
    2402.02009) and its official code (uiuctml/ExcessMTL, also LibMTL's and TorchJD's ``ExcessMTL``):
    task t's excess risk is estimated by a second-order Taylor expansion with an AdaGrad diagonal
    Hessian, ``e_t = g_t^T diag(1 / sqrt(S_t + 1e-7)) g_t`` with ``S_t = sum over steps of g_t^2``
    (elementwise). The first estimate of a task is its reference ``e_t^0``; from then on
    ``w_t <- w_t exp(eta e_t / e_t^0)`` and ``w`` is renormalised to sum to T (start: all 1). The
    weighted loss ``sum_t w_t L_t`` is back-propagated: shared weights and head scales are both ``w``
    (``grad == weights @ grads``), updated before this step's combination as in the code. Tasks far
    from convergence (large excess risk relative to their start) gain weight; a noisy task whose loss
    cannot fall further (large Bayes error) does not.

    Memory: T x n state (the squared-gradient sums, in the shared parameters' dtype and device).
    Cost per step: about four elementwise passes over the ``(T, n)`` gradients.

    Args:
        robust_step_size: ``eta`` (default 1e-2, the official code's default; its README example
            uses 1, TorchJD's default is 1).
        reference_steps: the reference ``e_t^0`` is the mean of the task's first ``reference_steps``
            estimates, and the weights stay at 1 until it is known (default 1: the paper's first
            estimate). Set it to the learning-rate warm-up where a head's gradient grows by orders of
            magnitude in its first steps. RTMDet's quality-weighted losses start near 0: on the demo
            its gradient norm is 0.02 at step 1 (segmentation's 0.6) and 3.1 at step 15, detection's
            ``e_t / e_t^0`` passes 100 (from the weights' log), and a first-step reference gives
            detection all the weight (3.0, the others < 1e-4) by step 10. The official code's flag,
            ``first_epoch``, suggests the same reading; LibMTL's GradNorm takes its reference over the
            first epoch.

    Departures: the weights are kept as log-weights per task name and normalised over the tasks
    of the step (``T softmax``: the same as the code's renormalisation when all are present); a task
    missing from a step keeps its sums and weight. A task whose reference window averages 0 (zero
    gradients) extends it until its mean is positive.
    """

    def __init__(self, robust_step_size: float = 1e-2, reference_steps: int = 1, tasks=None):
        super().__init__(tasks)
        check_number('ExcessMTLAggregator', 'robust_step_size', robust_step_size, low=0, low_open=True)
        check_number('ExcessMTLAggregator', 'reference_steps', reference_steps, low=1, integer=True)
        self.robust_step_size = float(robust_step_size)
        self.reference_steps = int(reference_steps)
        self._sq_sum: Dict[str, Tensor] = {}
        self._reference: Dict[str, float] = {}
        self._window: Dict[str, Tuple[float, int]] = {}   # task -> (sum, count) of estimates before its reference
        self._log_w: Dict[str, float] = {}

    def excess_risk(self, task: str, grad: Tensor, scratch: Optional[Tuple[Tensor, Tensor]] = None) -> float:
        """Add ``grad^2`` to the task's sums; return ``grad^T diag(1 / sqrt(S + 1e-7)) grad``.

        ``scratch``: two buffers shaped as ``grad`` to reuse (no allocation per call)."""
        sq, inv = scratch if scratch is not None else (torch.empty_like(grad), torch.empty_like(grad))
        torch.square(grad, out=sq)
        S = self._sq_sum.get(task)
        S = sq.clone() if S is None else S.to(sq).add_(sq)
        self._sq_sum[task] = S
        return float(torch.dot(sq, torch.add(S, 1e-7, out=inv).rsqrt_()))

    def aggregate(self, grads: Tensor, losses: Tensor, own_norms: Optional[Tensor] = None,
                  tasks: Optional[Sequence[str]] = None) -> AggregateResult:
        tasks = self.tasks_of_rows(len(grads), tasks)
        scratch = (torch.empty_like(grads[0]), torch.empty_like(grads[0]))
        for i, t in enumerate(tasks):
            e = self.excess_risk(t, grads[i], scratch)
            ref = self._reference.get(t)
            if ref is None:
                total, count = self._window.get(t, (0.0, 0))
                total, count = total + e, count + 1
                if count >= self.reference_steps and total > 0:
                    self._reference[t] = total / count
                    self._window.pop(t, None)
                else:
                    self._window[t] = (total, count)
                self._log_w.setdefault(t, 0.0)
            else:
                self._log_w[t] += self.robust_step_size * e / ref
        w = self.weights(tasks)
        return make_result(grads, w, w)

    def weights(self, tasks: Sequence[str]) -> np.ndarray:
        """``T softmax`` of the tasks' log-weights (all 1 at the start)."""
        logw = np.array([self._log_w.get(t, 0.0) for t in tasks])
        e = np.exp(logw - logw.max())
        return len(tasks) * e / e.sum()

    def state_dict(self):
        return dict(sq_sum={t: s.clone() for t, s in self._sq_sum.items()}, reference=dict(self._reference),
                    window={t: [float(a), int(n)] for t, (a, n) in self._window.items()}, log_w=dict(self._log_w))

    def load_state_dict(self, state):
        self._sq_sum = {str(t): s.clone() for t, s in state.get('sq_sum', {}).items()}
        self._reference = {str(t): float(v) for t, v in state.get('reference', {}).items()}
        self._window = {str(t): (float(a), int(n)) for t, (a, n) in state.get('window', {}).items()}
        self._log_w = {str(t): float(v) for t, v in state.get('log_w', {}).items()}
