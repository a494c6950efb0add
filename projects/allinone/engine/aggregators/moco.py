"""MoCo: multi-objective gradient correction (Fernando, Shen, Liu, Chaudhury, Murugesan, Chen; ICLR 2023)."""
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ...registry import AGGREGATORS
from ._gram import project_simplex
from .base import AggregateResult, GradAggregator, check_number

NORMALIZE = ('loss', 'none')
LAMBDA_UPDATES = ('softmax', 'simplex')


def pairwise_gram(rows: List[Tensor]) -> np.ndarray:
    """``K[i, j] = rows[i] . rows[j]`` in float64 from per-pair dot products (no stacked copy)."""
    T = len(rows)
    K = np.zeros((T, T))
    for i in range(T):
        for j in range(i + 1):
            K[i, j] = K[j, i] = float(torch.dot(rows[i], rows[j]))
    return K


@AGGREGATORS.register_module()
class MoCoAggregator(GradAggregator):
    """Track each task's gradient with a moving average, and step along the min-norm-seeking combination.

    "Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent Approach" (Fernando,
    Shen, Liu, Chaudhury, Murugesan, Chen; ICLR 2023, arXiv 2210.12624), Algorithm 1: at step k
    (from 1), with ``beta_k = beta / k^beta_sigma`` and ``gamma_k = gamma / k^gamma_sigma``::

        y_t <- y_t - beta_k (y_t - h_t)                               (tracked gradients, y_t = 0 at first)
        lambda <- update(lambda - gamma_k (Y Y^T + rho I) lambda)      (lambda = 1/T at first)
        d = sum_t lambda_t y_t

    ``update`` is a softmax and ``h_t = L_t g_t / |g_t|`` in the authors' code for their multi-task
    experiments (heshandevaka/MoCo, ``raw_loss``) and LibMTL's ``MoCo``, with LibMTL's defaults
    (beta 0.5, gamma 0.1, both sigmas 0.5, rho 0): the default here. The paper's Algorithm 1 projects
    onto the simplex and tracks the raw gradients (``lambda_update='simplex'``, ``normalize='none'``).
    Heads get their plain gradients. ``weights`` (logged) are the coefficients of this step's raw
    gradients in the update, ``lambda_t beta_k L_t / |g_t|`` (``lambda_t beta_k`` with ``normalize='none'``):
    the rest of ``d`` is the tracked history, so ``grad != weights @ grads``.

    Memory: T x n state (one tracked gradient per task, as the shared parameters' dtype and device).
    Cost per step: T in-place updates and ``T(T+1)/2`` dot products of length n, plus the combination.

    Args:
        beta, beta_sigma: tracking rate ``beta / k^beta_sigma`` (defaults 0.5, 0.5).
        gamma, gamma_sigma: step of ``lambda``, ``gamma / k^gamma_sigma`` (defaults 0.1, 0.5).
        rho: ridge of the ``lambda`` update (default 0.0).
        normalize: ``'loss'`` (default: ``h_t = L_t g_t / (|g_t| + 1e-8)``) or ``'none'`` (``h_t = g_t``).
        lambda_update: ``'softmax'`` (default) or ``'simplex'`` (Euclidean projection, the paper's).

    Departures: a task missing from a step keeps its ``y_t`` and ``lambda_t``; the ``lambda`` update
    and the combination run over the tasks of the step (``k`` counts aggregated steps). The paper's
    projection of ``y_t`` onto a ball (its Lipschitz bound) is not done, as in both codes.
    """

    combines_rows = False   # the update carries momentum: nothing for CR-MOGM to average

    def __init__(self, beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1, gamma_sigma: float = 0.5,
                 rho: float = 0.0, normalize: str = 'loss', lambda_update: str = 'softmax', tasks=None):
        super().__init__(tasks)
        check_number('MoCoAggregator', 'beta', beta, low=0, high=1, low_open=True)
        for name, value in (('beta_sigma', beta_sigma), ('gamma_sigma', gamma_sigma), ('rho', rho)):
            check_number('MoCoAggregator', name, value, low=0)
        check_number('MoCoAggregator', 'gamma', gamma, low=0, low_open=True)
        if normalize not in NORMALIZE:
            raise ValueError(f'MoCoAggregator.normalize must be one of {NORMALIZE}, got {normalize!r}')
        if lambda_update not in LAMBDA_UPDATES:
            raise ValueError(f'MoCoAggregator.lambda_update must be one of {LAMBDA_UPDATES}, got {lambda_update!r}')
        self.beta, self.beta_sigma = float(beta), float(beta_sigma)
        self.gamma, self.gamma_sigma, self.rho = float(gamma), float(gamma_sigma), float(rho)
        self.normalize, self.lambda_update = normalize, lambda_update
        self._step = 0
        self._y: Dict[str, Tensor] = {}
        self._lambda: Dict[str, float] = {}

    def aggregate(self, grads: Tensor, losses: Tensor, own_norms: Optional[Tensor] = None,
                  tasks: Optional[Sequence[str]] = None) -> AggregateResult:
        tasks = self.tasks_of_rows(len(grads), tasks)
        T = len(tasks)
        self._step += 1
        beta = self.beta / self._step ** self.beta_sigma
        gamma = self.gamma / self._step ** self.gamma_sigma
        coef = np.ones(T)
        if self.normalize == 'loss':
            norms = torch.linalg.vector_norm(grads, dim=1).double().cpu().numpy()
            coef = np.array([float(x) for x in losses]) / (norms + 1e-8)
        for i, t in enumerate(tasks):
            y = self._y.get(t)
            y = torch.zeros_like(grads[i]) if y is None else y.to(grads[i])
            self._y[t] = y.mul_(1 - beta).add_(grads[i], alpha=beta * coef[i])
        Y = [self._y[t] for t in tasks]
        lam = np.array([self._lambda.get(t, 1.0 / T) for t in tasks])
        v = lam - gamma * (pairwise_gram(Y) + self.rho * np.eye(T)) @ lam
        lam = np.exp(v - v.max()) / np.exp(v - v.max()).sum() if self.lambda_update == 'softmax' else project_simplex(v)
        self._lambda.update(zip(tasks, lam.tolist()))
        grad = torch.zeros_like(grads[0])
        for y, w in zip(Y, lam):
            grad.add_(y, alpha=float(w))
        weights = torch.tensor(lam * beta * coef, dtype=grads.dtype)
        return AggregateResult(grad=grad, weights=weights, own_scales=torch.ones(T, dtype=grads.dtype))

    def state_dict(self):
        return dict(step=self._step, y={t: y.clone() for t, y in self._y.items()}, lambda_=dict(self._lambda))

    def load_state_dict(self, state):
        self._step = int(state.get('step', 0))
        self._y = {str(t): y.clone() for t, y in state.get('y', {}).items()}
        self._lambda = {str(t): float(v) for t, v in state.get('lambda_', {}).items()}
