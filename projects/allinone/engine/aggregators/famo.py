"""FAMO: Fast Adaptive Multitask Optimization (Liu, Feng, Stone and Liu, NeurIPS 2023)."""
import math
from typing import Dict, List

import torch

from ...registry import AGGREGATORS
from ._scalar_optim import ScalarOptimizer
from .base import TaskScalingAggregator, check_number


@AGGREGATORS.register_module()
class FAMOAggregator(TaskScalingAggregator):
    """Balance the decrease of the *log* losses with learnt task logits ``xi``.

    With ``z = softmax(xi)`` the step descends ``sum_t z_t log L_t`` rescaled by
    ``c = 1 / sum_t(z_t / L_t)``: task t's gradient is scaled by ``c z_t / L_t`` (shared and own
    parameters alike), and the weights sum to 1. The logits then learn from the observed change
    of the log losses, ``delta_t = log L_t(before) - log L_t(after)``: their gradient is
    ``J_softmax(xi)^T delta`` (Adam, lr 0.025, L2 weight decay ``gamma`` on ``xi``), so a task whose loss
    fell less than the others gains weight.

    Reference: B. Liu, Y. Feng, P. Stone, Q. Liu, "FAMO: Fast Adaptive Multitask Optimization",
    NeurIPS 2023 (arXiv 2306.03792).

    Args:
        lr: Adam learning rate of the logits (default 0.025, the paper's).
        gamma: L2 weight decay on the logits (default 1e-3, the paper's value for its vision
            benchmarks; the authors' code defaults to 0.01).
        eps: losses are clamped at 0 and offset by ``eps`` before the log and the division
            (default 1e-8, as the authors' code; FAMO assumes positive losses).

    Departures: the paper measures the loss change of a step with an extra forward pass on the same
    batch after the update. Here no extra forward is run: ``delta_t`` is the change between the
    losses of two consecutive steps (each on its own batch), so it carries batch-to-batch noise (which
    Adam averages out) and the logits learn from a step's effect one step later. Only tasks present
    in both of two consecutive steps enter an update (the softmax Jacobian is taken over them); a
    task missing from a step keeps its state and rejoins the updates one step after it returns. The
    authors' ``max_norm`` (global gradient clip) is the optim wrapper's ``clip_grad``; their
    ``min_losses`` offset is not offered (0).
    """

    def __init__(self, lr: float = 0.025, gamma: float = 1e-3, eps: float = 1e-8, tasks=None):
        super().__init__(tasks)
        check_number('FAMOAggregator', 'gamma', gamma, low=0)
        check_number('FAMOAggregator', 'eps', eps, low=0, low_open=True)
        self._opt = ScalarOptimizer('adam', lr, weight_decay=gamma, owner='FAMOAggregator')
        self.lr = float(lr)
        self.gamma = float(gamma)
        self.eps = float(eps)
        self._xi: Dict[str, float] = {}
        self._step = 0                          # aggregated steps so far
        self._prev_log: Dict[str, float] = {}   # each task's log loss at the last step it was present
        self._prev_step: Dict[str, int] = {}    # ... and that step

    def _d(self, loss: float) -> float:
        return max(float(loss), 0.0) + self.eps

    def task_factor(self, norm, own_norm, loss, task=None):
        # z_t / L_t up to the softmax normaliser, which cancels in c (common_scale)
        top = max(self._xi.values(), default=0.0)
        return math.exp(self._xi.get(task, 0.0) - top) / self._d(loss)

    def common_scale(self, norms, own_norms, factors):
        total = float(factors.sum())
        return 1.0 / total if total > 0 else 0.0

    def combine_factors(self, norms, own_norms, factors, losses=None, tasks=None):
        out = super().combine_factors(norms, own_norms, factors, losses, tasks)
        if losses is not None:
            self._update(self.tasks_of_rows(len(factors), tasks), losses.tolist())
        return out

    def _update(self, tasks: List[str], losses: List[float]) -> None:
        log_now = {t: math.log(self._d(loss)) for t, loss in zip(tasks, losses)}
        both = [t for t in tasks if self._prev_step.get(t) == self._step - 1]
        if both:
            for t in both:
                self._xi.setdefault(t, 0.0)
            z = torch.softmax(torch.tensor([self._xi[t] for t in both], dtype=torch.float64), 0).tolist()
            delta = [self._prev_log[t] - log_now[t] for t in both]
            mean = sum(zi * di for zi, di in zip(z, delta))
            self._opt.step(self._xi, {t: zi * (di - mean) for t, zi, di in zip(both, z, delta)})
        self._prev_log.update(log_now)
        self._prev_step.update((t, self._step) for t in log_now)
        self._step += 1

    def next_weights(self, losses: Dict[str, float]) -> Dict[str, float]:
        """The weights the next step would use for the given losses (for logs and tests)."""
        f = {t: self.task_factor(0.0, 0.0, loss, t) for t, loss in losses.items()}
        total = sum(f.values())
        return {t: v / total for t, v in f.items()}

    def state_dict(self) -> Dict:
        return dict(xi=dict(self._xi), step=self._step, prev_log=dict(self._prev_log),
                    prev_step=dict(self._prev_step), optimizer=self._opt.state_dict())

    def load_state_dict(self, state: Dict) -> None:
        self._xi = {k: float(v) for k, v in state.get('xi', {}).items()}
        self._step = int(state.get('step', 0))
        self._prev_log = {k: float(v) for k, v in state.get('prev_log', {}).items()}
        self._prev_step = {k: int(v) for k, v in state.get('prev_step', {}).items()}
        self._opt.load_state_dict(state.get('optimizer', {}))
