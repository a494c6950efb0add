"""STCH: smooth Tchebycheff scalarisation (Lin et al., ICML 2024)."""
import logging
import math
from typing import Dict

import torch
from mmengine.logging import print_log

from ...registry import AGGREGATORS
from .base import TaskScalingAggregator, check_number

#: largest exponent a task factor may carry into the float32 streaming buffer (e^60 ~ 1e26)
_EXP_LIMIT = 60.0


@AGGREGATORS.register_module()
class STCHAggregator(TaskScalingAggregator):
    """Descend ``T mu log sum_t exp(log(L_t / z_t) / mu)`` after a warm-up on ``sum_t log L_t``.

    "Smooth Tchebycheff Scalarization for Multi-Objective Optimization" (Lin et al.,
    ICML 2024, arXiv 2402.19078): the smooth version of the Tchebycheff scalarisation
    ``max_t (L_t - z_t)`` optimises the worst task. For multi-task learning the official code
    (Xi-L/STCH, ``STCH_MTL``, also LibMTL's ``STCH``) works on log losses: for ``warmup`` steps it
    descends ``sum_t log L_t`` (factor ``1 / L_t``), averaging the losses of the last ``nadir_steps`` of
    them into the nadir point ``z_t``; then it descends ``T mu logsumexp_t(log(L_t / z_t) / mu)``,
    whose gradient scales task t by ``T p_t / L_t`` with ``p = softmax(log(L / z) / mu)``: the task
    furthest above its nadir (relative) dominates as ``mu -> 0``, the tasks count equally (``1 / z_t``
    each, rescaled) at ``mu = 1``. Shared and own parameters get the same factor. Streaming (one
    buffer): task t's factor ``exp(a_t - r) / L_t`` (``a_t = log(L_t / z_t) / mu``, ``r`` the largest
    ``a`` of the previous step) is known as its backward ends; the common ``T / sum_s exp(a_s - r)``
    once all losses are known.

    Args:
        mu: smoothing (default 1.0, the official code's; the paper studies 0.01 to 1).
        warmup: steps of ``sum_t log L_t`` before STCH starts (default 100, nadir window included;
            the official code: 5 epochs).
        nadir_steps: the nadir ``z_t`` is the mean loss of the last ``nadir_steps`` warm-up steps
            (default 20; the official code: the last warm-up epoch).
        eps: losses are clamped at ``eps`` (default 1e-8) before logs and divisions.

    Departures: epochs become steps. A task absent from the whole nadir window takes its first loss
    after it as its nadir. Float32 range: a factor's exponent ``a_t - r`` above 60 is clipped (only
    possible with a small ``mu`` and a loss jump of more than ``e^(60 mu)`` in one step); such a step
    logs a warning and is counted (``clipped_steps``). ``weights`` are always the factors applied.
    """

    def __init__(self, mu: float = 1.0, warmup: int = 100, nadir_steps: int = 20, eps: float = 1e-8,
                 tasks=None):
        super().__init__(tasks)
        check_number('STCHAggregator', 'mu', mu, low=0, low_open=True)
        check_number('STCHAggregator', 'nadir_steps', nadir_steps, low=1, integer=True)
        check_number('STCHAggregator', 'warmup', warmup, low=nadir_steps, integer=True)  # nadir from warm-up steps
        check_number('STCHAggregator', 'eps', eps, low=0, low_open=True)
        self.mu, self.warmup, self.nadir_steps, self.eps = float(mu), warmup, nadir_steps, float(eps)
        self._step = 0                               # aggregated steps so far
        self._sum: Dict[str, float] = {}             # nadir window: sum of each task's losses
        self._count: Dict[str, int] = {}             # ... and their number
        self._nadir: Dict[str, float] = {}
        self._ref = 0.0                              # largest exponent of the previous STCH step
        self.clipped_steps = 0

    def _loss(self, loss) -> float:
        return max(float(loss), self.eps)

    @property
    def warming_up(self) -> bool:
        """The step being aggregated is a warm-up step (``sum log L``)."""
        return self._step < self.warmup

    def nadir(self, task: str, loss: float) -> float:
        """``z_t``: the window mean, or (no loss of ``task`` in the window) its first loss after it."""
        if task not in self._nadir:
            n = self._count.get(task, 0)
            self._nadir[task] = self._sum[task] / n if n else self._loss(loss)
        return self._nadir[task]

    def exponent(self, task: str, loss: float) -> float:
        """``a_t = log(L_t / z_t) / mu``."""
        return math.log(self._loss(loss) / self.nadir(task, loss)) / self.mu

    def task_factor(self, norm, own_norm, loss, task=None):
        if self.warming_up:
            return 1.0 / self._loss(loss)
        return math.exp(min(self.exponent(task, loss) - self._ref, _EXP_LIMIT)) / self._loss(loss)

    def combine_factors(self, norms, own_norms, factors, losses=None, tasks=None):
        if losses is None:
            raise ValueError('STCHAggregator needs the losses of the step')
        tasks = self.tasks_of_rows(len(factors), tasks)
        losses = torch.as_tensor(losses).tolist()
        if self.warming_up:
            scale = 1.0
            if self._step >= self.warmup - self.nadir_steps:
                for t, loss in zip(tasks, losses):
                    self._sum[t] = self._sum.get(t, 0.0) + self._loss(loss)
                    self._count[t] = self._count.get(t, 0) + 1
        else:
            a = [self.exponent(t, loss) for t, loss in zip(tasks, losses)]
            shifted = [x - self._ref for x in a]
            total = sum(math.exp(min(x, _EXP_LIMIT)) for x in shifted)
            if max(shifted, default=0.0) > _EXP_LIMIT or not total > 0:
                self.clipped_steps += 1
                print_log(f'STCHAggregator: exponents {dict(zip(tasks, shifted))} relative to the previous step '
                          f'left the float32-safe range at step {self._step} (mu={self.mu}); factors clipped '
                          f'({self.clipped_steps} such steps so far)', logger='current', level=logging.WARNING)
            scale = len(a) / total if total > 0 else 0.0
            if a:
                self._ref = max(a)
        self._step += 1
        return factors * scale, self.own_scales(factors, scale, own_norms), scale

    def state_dict(self) -> Dict:
        return dict(step=self._step, sum=dict(self._sum), count=dict(self._count), nadir=dict(self._nadir),
                    ref=self._ref, clipped_steps=self.clipped_steps)

    def load_state_dict(self, state: Dict) -> None:
        self._step = int(state.get('step', 0))
        self._sum = {str(k): float(v) for k, v in state.get('sum', {}).items()}
        self._count = {str(k): int(v) for k, v in state.get('count', {}).items()}
        self._nadir = {str(k): float(v) for k, v in state.get('nadir', {}).items()}
        self._ref = float(state.get('ref', 0.0))
        self.clipped_steps = int(state.get('clipped_steps', 0))
