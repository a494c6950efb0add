"""Shared pieces of the gradient-aggregation methods (PCGrad, CAGrad, MGDA, IMTL-G, ...).

Every one of these methods returns a linear combination ``w @ grads`` of the task gradients and
decides ``w`` from the ``T x T`` Gram matrix alone. So the only O(n) work is the Gram matrix
(per slice of columns in the gradients' dtype, the slices summed in float64 on their device) and the final
combination; everything else is float64 numpy on ``T x T`` matrices.
"""
import itertools
import math

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from .base import AggregateResult

#: columns per slice when forming the Gram matrix
GRAM_CHUNK = 1 << 18
#: above this many tasks :func:`min_norm_weights` uses SLSQP instead of the exact enumeration
EXACT_MAX_TASKS = 10


def gram_matrix(grads: Tensor, chunk: int = GRAM_CHUNK) -> np.ndarray:
    """``grads @ grads.T``: slices in the gradients' dtype, summed in float64 (90M-long rows stay accurate)."""
    T, n = grads.shape
    K = torch.zeros(T, T, dtype=torch.float64, device=grads.device)
    for start in range(0, n, chunk):
        block = grads[:, start:start + chunk]
        # each slice's product in the gradients' own precision (one BLAS call, no float64 copy of the
        # slice), the slices summed in float64: the rounding stays that of a 256k-long dot product
        K += (block @ block.T).to(torch.float64)
    K = K.cpu().numpy()
    return (K + K.T) / 2


def make_result(grads: Tensor, weights, own_scales=None) -> AggregateResult:
    """``grad = weights @ grads`` with the weights exactly as returned (in the gradients' dtype)."""
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64)).to(grads.dtype)
    grad = w.to(grads.device) @ grads
    if own_scales is None:
        head = torch.ones(len(w), dtype=grads.dtype)
    else:
        head = torch.as_tensor(np.asarray(own_scales, dtype=np.float64)).to(grads.dtype)
    return AggregateResult(grad=grad, weights=w, own_scales=head)


def random_order(T: int, skip: int, generator: torch.Generator):
    """The other tasks than ``skip`` in a random order drawn from ``generator``.

    The generator is the method's own (seeded alike on every rank, saved in its state), never
    torch's global RNG, which differs between ranks under ``randomness.diff_rank_seed`` and moves
    with everything else the run draws. With at most one other task nothing is drawn.
    """
    if T <= 2:
        return [j for j in range(T) if j != skip]
    return [j for j in torch.randperm(T, generator=generator).tolist() if j != skip]


def min_norm_weights(K: np.ndarray, exact_max_tasks: int = EXACT_MAX_TASKS) -> np.ndarray:
    """``argmin_{w in simplex} w^T K w``: the min-norm point of the convex hull of the rows.

    Exact for ``T <= exact_max_tasks``: for every support set S the equality-constrained problem
    ``K_S w_S + mu 1 = 0, 1^T w_S = 1`` is solved (nonsingular exactly when the gradients of S are
    affinely independent, and the optimum always has such a support); of the feasible (w >= 0)
    candidates the one with the smallest ``w^T K w`` is taken. Every candidate is a true point of
    the simplex, so a badly conditioned subset can never return a worse value than the optimum's
    own support. Larger T: SLSQP on the simplex.
    """
    K = np.asarray(K, dtype=np.float64)
    T = len(K)
    if T == 1:
        return np.ones(1)
    scale = float(np.max(np.diag(K)))
    if not scale > 0:
        return np.full(T, 1.0 / T)
    A = K / scale
    if T <= exact_max_tasks:
        best, best_val = None, math.inf
        for k in range(1, T + 1):
            for S in itertools.combinations(range(T), k):
                S = list(S)
                M = np.zeros((k + 1, k + 1))
                M[:k, :k] = A[np.ix_(S, S)]
                M[:k, k] = 1.0
                M[k, :k] = 1.0
                rhs = np.zeros(k + 1)
                rhs[k] = 1.0
                try:
                    sol = np.linalg.solve(M, rhs)
                except np.linalg.LinAlgError:
                    continue
                wS = sol[:k]
                if not np.all(np.isfinite(wS)) or wS.min() < -1e-9:
                    continue
                w = np.zeros(T)
                w[S] = np.clip(wS, 0.0, None)
                total = w.sum()
                if not total > 0:
                    continue
                w /= total
                val = float(w @ A @ w)
                if val < best_val - 1e-15:
                    best, best_val = w, val
        if best is not None:
            return best
    res = minimize(lambda x: 0.5 * x @ A @ x, np.full(T, 1.0 / T), jac=lambda x: A @ x, method='SLSQP',
                   bounds=[(0.0, 1.0)] * T, constraints=[dict(type='eq', fun=lambda x: x.sum() - 1.0,
                                                              jac=lambda x: np.ones_like(x))],
                   options=dict(ftol=1e-15, maxiter=1000))
    w = np.clip(np.nan_to_num(res.x, nan=0.0), 0.0, None)
    return w / w.sum() if w.sum() > 0 else np.full(T, 1.0 / T)


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of ``v`` onto the probability simplex (sort-based, exact)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.arange(1, len(v) + 1)
    support = np.nonzero(u - css / k > 0)[0]
    if not len(support):  # entries so large that 1 is lost in their sums: all weight on the largest
        out = np.zeros(len(v))
        out[int(np.argmax(v))] = 1.0
        return out
    rho = int(support[-1])
    return np.maximum(v - css[rho] / (rho + 1), 0.0)
