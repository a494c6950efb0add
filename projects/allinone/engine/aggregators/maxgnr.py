"""MaxGNR: task weights that maximise each task's gradient-to-noise ratio (Fan et al., ACCV 2022)."""
import logging
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.logging import MessageHub, print_log
from scipy.optimize import minimize
from torch import Tensor

from ...registry import AGGREGATORS
from .base import AggregateResult, GradAggregator, check_number, check_seed

_P = 2 ** 31 - 1       # Mersenne prime of the hash family
_CHUNK = 1 << 22       # coordinates hashed at a time (bounds the temporary memory)
_CACHE_MAX = 1 << 22   # cache the hashed buckets and signs of vectors up to this size


class CountSketch:
    """A fixed random count sketch ``R^n -> R^dim``: coordinate i goes to bucket ``h(i)`` with sign ``s(i)``.

    ``h`` and ``s`` come from 2-universal hashes ``((a i + b) mod p)`` whose constants are drawn from
    ``seed``, so the sketch is the same on every rank and after a resume and needs no stored index
    (for large n it is recomputed in chunks; small n are cached). ``E[<Sx, Sy>] = <x, y>``.
    """

    def __init__(self, dim: int, seed: int = 0):
        self.dim = int(dim)
        g = torch.Generator().manual_seed(int(seed))
        self._a, self._b, self._c, self._d = torch.randint(1, _P, (4,), generator=g).tolist()
        self._cache = {}

    def _hash(self, start: int, end: int, device):
        i = torch.arange(start, end, dtype=torch.int64, device=device)
        bucket = ((self._a * i + self._b) % _P) % self.dim
        sign = (((self._c * i + self._d) % _P) % 2) * 2 - 1
        return bucket, sign

    def __call__(self, x: Tensor) -> Tensor:
        """Sketch the rows of ``x`` (``(n,)`` or ``(T, n)``) to ``(dim,)`` / ``(T, dim)``."""
        rows = x.reshape(-1, x.shape[-1])
        n = rows.shape[1]
        out = rows.new_zeros(rows.shape[0], self.dim)
        scratch = rows.new_empty(min(n, _CHUNK))   # signed coordinates of one row chunk, reused
        for start in range(0, n, _CHUNK):
            end = min(n, start + _CHUNK)
            key = (start, end, str(rows.device), rows.dtype)
            if key in self._cache:
                bucket, sign = self._cache[key]
            else:
                bucket, sign = self._hash(start, end, rows.device)
                sign = sign.to(rows.dtype)
                if n <= _CACHE_MAX:   # int32 buckets: half the cached memory, same sums
                    self._cache[key] = (bucket.to(torch.int32), sign)
            signed = scratch[:end - start]
            for r in range(rows.shape[0]):
                # row by row: a 1-d index_add_ adds in the same order as one along dim 1 of the (T, chunk)
                # block (bit-identical result), a little faster, with a chunk-sized temporary instead of T
                out[r].index_add_(0, bucket, torch.mul(rows[r, start:end], sign, out=signed))
        return out.reshape(*x.shape[:-1], self.dim)


def _noise_matrices(Q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``A[i]``: Q with row and column i zeroed and ``A[i][i, i] = s_i``, so ``E||d - w_i G_i||^2 = w^T A_i w``."""
    T = len(s)
    A = np.broadcast_to(Q, (T, T, T)).copy()
    idx = np.arange(T)
    A[idx, idx, :] = 0.0
    A[idx, :, idx] = 0.0
    A[idx, idx, idx] = s
    return A


def gnr(w: np.ndarray, Q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``GNR_i(w)`` for every task, with the signal ``||G_i||^2 = max(Q_ii - s_i, 0)``."""
    A = _noise_matrices(Q, s)
    return w ** 2 * np.maximum(np.diag(Q) - s, 0.0) / ((A @ w) @ w)


def neg_sum_log_gnr(theta: np.ndarray, Q: np.ndarray, s: np.ndarray):
    """``-sum_i log GNR_i(w)`` (up to the constant ``sum_i log ||G_i||^2``) and its gradient in theta.

    ``w = exp(theta)``; ``Q[j, k] = E[g_j . g_k]`` (so ``Q_jj = ||G_j||^2 + s_j``), ``s`` the noise
    variances. ``GNR_i = w_i^2 ||G_i||^2 / (w^T A_i w)`` with ``A_i`` = Q with row and column i zeroed
    and ``A_i[i, i] = s_i``.
    """
    w = np.exp(theta)
    A = _noise_matrices(Q, s)
    Aw = A @ w                              # (T, T): row i is A_i w
    noise = Aw @ w                          # (T,): w^T A_i w
    f = -(2.0 * np.log(w).sum() - np.log(noise).sum())
    grad_w = -(2.0 / w - 2.0 * (Aw / noise[:, None]).sum(0))
    return f, grad_w * w


@AGGREGATORS.register_module()
class MaxGNRAggregator(GradAggregator):
    """Weights ``w`` that maximise ``sum_i log GNR_i(w)``, from running gradient statistics.

    A *reconstruction* from the abstract of the paper (its text and code were not reachable): with
    task gradients ``g_j`` of mean ``G_j`` and noise variance ``s_j = E||g_j - G_j||^2``, drawn from
    independent batches, the update ``d = sum_j w_j g_j`` carries for task i the signal ``w_i G_i``
    and the noise ``d - w_i G_i`` (its own batch noise plus the inter-task gradient noise), so
    ``GNR_i(w) = w_i^2 ||G_i||^2 / E||d - w_i G_i||^2`` with
    ``E||d - w_i G_i||^2 = w_i^2 s_i + sum_{j!=i} w_j^2 (||G_j||^2 + s_j) + sum_{j!=k; j,k!=i} w_j w_k G_j.G_k``.
    Every ``update_interval`` steps after ``warmup`` steps (equal weights until then) the weights
    become ``argmax_w sum_i log GNR_i(w)`` with ``w >= 0``, ``sum w = T`` (scipy L-BFGS-B over
    ``log w``; GNR is scale free in w, and ``log GNR_i -> -inf`` as ``w_i -> 0``, so no task is
    starved). The step's gradient is ``sum_t w_t g_t``; the heads are scaled by ``w_t`` too. For two
    orthogonal tasks the optimum is ``w_i ~ (s_i (||G_i||^2 + s_i))^(-1/4)``: the noisier task, and
    the one whose gradient is larger, gets the smaller weight.

    Statistics (EMAs, updated every step from the raw task gradients, by task name):
    ``Q_jk = EMA(g_j . g_k)`` computed exactly in the full space (unbiased for ``E[g_j . g_k]``:
    ``G_j . G_k`` for j != k as the batches are independent, ``||G_j||^2 + s_j`` on the diagonal);
    the noise ``s_j = EMA(||g_j - m_j||^2) (1 + mean_beta) / 2`` where ``m_j`` is the EMA mean of
    ``g_j`` before this step (the factor removes the variance of ``m_j`` at stationarity). Only ``m_j``
    needs a gradient-sized buffer: with ``sketch_dim`` it lives in a fixed count sketch of the
    gradient (norms and inner products preserved in expectation), so the extra memory is
    ``T * sketch_dim`` floats instead of T copies of the shared gradient. Cost per step: ``T(T+1)/2``
    dot products and one sketch of the ``(T, n)`` gradients (hashed on the fly), plus a T-variable
    solve every ``update_interval`` steps. Logged at each solve: ``maxgnr.gnr.{task}`` (the GNR at the
    new weights) and ``maxgnr.solver_failures``.

    Reference: C. Fan, W. Chen, J. Tian, Y. Li, H. He, Y. Jin, "MaxGNR: A Dynamic Weight Strategy via
    Maximizing Gradient-to-Noise Ratio for Multi-Task Learning", ACCV 2022 (arXiv 2302.09352).

    Args:
        beta: EMA factor of the inner products ``Q`` and the noise ``s`` (default 0.99).
        mean_beta: EMA factor of the gradient means ``m_j`` (default 0.9; short, so that the drift
            of the gradient over training counts little as noise).
        warmup: steps with equal weights before the first solve (default 50; at least 2, as ``s``
            needs two gradients of a task).
        update_interval: steps between solves (default 10).
        sketch_dim: size of the count sketch holding ``m_j`` (default 4096), or ``None`` to keep
            full-size means (T extra copies of the shared gradient).
        seed: seed of the sketch's hash (default 0).
        min_ratio: the smallest allowed ratio of a weight to the largest (default 1e-3).
        max_iter: L-BFGS-B iterations per solve (default 100).

    Departures (all choices of this reconstruction): the noise is the spread of a task's gradient
    across steps (per-sample gradients are too costly), which also counts the drift of ``G_j`` over
    ``~1 / (1 - mean_beta)`` steps; EMAs start at their first observation; a task seen fewer than two
    times keeps weight 1 and stays out of the solve; a task missing from a step keeps its statistics
    and still takes part in the solves with them. ``Q`` is the EMA of the exact per-step inner
    products rather than of products of EMA means (unbiased off the diagonal, no sketch error). A
    solve that does not converge logs a warning and is counted (``solver_failures``, saved in the
    checkpoint); its result is used only if it improves the objective, else the previous weights stay.
    """

    streaming = False

    def __init__(self, beta: float = 0.99, mean_beta: float = 0.9, warmup: int = 50, update_interval: int = 10,
                 sketch_dim: Optional[int] = 4096, seed: int = 0, min_ratio: float = 1e-3, max_iter: int = 100,
                 tasks=None):
        super().__init__(tasks)
        owner = 'MaxGNRAggregator'
        for name, value in (('beta', beta), ('mean_beta', mean_beta)):
            check_number(owner, name, value, low=0, high=1, high_open=True)
        check_number(owner, 'warmup', warmup, low=2, integer=True)
        check_number(owner, 'update_interval', update_interval, low=1, integer=True)
        check_number(owner, 'sketch_dim', sketch_dim, low=1, integer=True, none_ok=True)
        check_seed(owner, seed)
        check_number(owner, 'min_ratio', min_ratio, low=0, high=1, low_open=True, high_open=True)
        check_number(owner, 'max_iter', max_iter, low=1, integer=True)
        self.beta, self.mean_beta = float(beta), float(mean_beta)
        self.warmup, self.update_interval = warmup, update_interval
        self.sketch_dim, self.seed = sketch_dim, seed
        self.min_ratio, self.max_iter = float(min_ratio), max_iter
        self._sketch = None if sketch_dim is None else CountSketch(sketch_dim, seed)
        self._reset_state()

    def _reset_state(self):
        self._step = 0
        self._w: Dict[str, float] = {}
        self._m: Dict[str, Tensor] = {}              # EMA mean of each task's (sketched) gradient
        self._dev: Dict[str, float] = {}             # EMA of ||g_j - m_j||^2
        self._Q: Dict[str, Dict[str, float]] = {}    # EMA of g_j . g_k, Q[j][k] for both orders
        self._failures = 0
        self._last_gnr: Dict[str, float] = {}        # GNR of each task at the last solve (logged)

    # ------------------------------------------------------------------ statistics
    def _ema(self, old, new, beta):
        return new if old is None else beta * old + (1 - beta) * new

    def _observe(self, grads: Tensor, tasks: List[str]) -> None:
        # pairwise dots (T is small), not grads @ grads.T: a (T, n) x (n, T) product can hit a very slow
        # multi-threaded BLAS path on CPU
        pairs = [(i, j) for i in range(len(tasks)) for j in range(i + 1)]
        dots = torch.stack([grads[i] @ grads[j] for i, j in pairs]).double().cpu().tolist()
        gram = dict(zip(pairs, dots))
        for i, a in enumerate(tasks):
            row = self._Q.setdefault(a, {})
            for j, b in enumerate(tasks[:i + 1]):
                row[b] = self._ema(row.get(b), gram[i, j], self.beta)
                self._Q.setdefault(b, {})[a] = row[b]
        y = grads if self._sketch is None else self._sketch(grads)
        for i, t in enumerate(tasks):
            m = self._m.get(t)
            if m is not None:
                m = m.to(y)
                dev = float(torch.linalg.vector_norm((y[i] - m).double()) ** 2)
                self._dev[t] = self._ema(self._dev.get(t), dev, self.beta)
            self._m[t] = y[i].clone() if m is None else torch.lerp(m, y[i], 1 - self.mean_beta)

    def statistics(self, tasks: Sequence[str]):
        """``(Q, s)`` as numpy arrays for ``tasks``: ``Q[j, k]`` estimates ``E[g_j . g_k]``, ``s`` the noise."""
        Q = np.array([[self._Q[a][b] for b in tasks] for a in tasks], dtype=np.float64)
        s = np.array([self._dev[t] * (1 + self.mean_beta) / 2 for t in tasks], dtype=np.float64)
        return Q, s

    # ------------------------------------------------------------------ solve
    def _solve(self) -> None:
        tasks = [t for t in self._dev if all(u in self._Q.get(t, {}) for u in self._dev)]
        tasks = [t for t in self.tasks if t in tasks] + [t for t in tasks if t not in self.tasks]
        if len(tasks) < 2:
            return
        Q, s = self.statistics(tasks)
        # EMAs of Gram matrices are PSD, unless tasks missing from some steps broke that: project back
        vals, vecs = np.linalg.eigh((Q + Q.T) / 2)
        Q = (vecs * np.maximum(vals, 0.0)) @ vecs.T
        # a tiny ridge keeps every noise term positive when a task's gradient is (nearly) zero
        ridge = 1e-12 * float(np.mean(np.diag(Q))) + 1e-300
        s = np.maximum(s, 0.0) + ridge
        Q = Q + ridge * np.eye(len(tasks))
        w0 = np.array([self._w.get(t, 1.0) for t in tasks])
        lo = math.log(self.min_ratio)
        x0 = np.clip(np.log(w0 / w0.max()), lo, 0.0)
        f0 = neg_sum_log_gnr(x0, Q, s)[0]
        res = minimize(neg_sum_log_gnr, x0, args=(Q, s), jac=True, method='L-BFGS-B',
                       bounds=[(lo, 0.0)] * len(tasks), options=dict(maxiter=self.max_iter))
        ok = bool(np.all(np.isfinite(res.x))) and np.isfinite(res.fun)
        if not res.success:
            self._failures += 1
            print_log(f'MaxGNRAggregator: the weight solve did not converge at step {self._step} '
                      f'({res.message}); {"its best point is used" if ok and res.fun <= f0 else "weights kept"} '
                      f'({self._failures} failed solves so far)', logger='current', level=logging.WARNING)
        if ok and res.fun <= f0:
            w = np.exp(res.x)
            w = w * len(tasks) / w.sum()
            self._w.update(zip(tasks, w.tolist()))
        # into the run's metrics: the failures (0 normally) and each task's GNR at the new weights
        w = np.array([self._w.get(t, 1.0) for t in tasks])
        self._last_gnr = dict(zip(tasks, gnr(w, Q, s).tolist()))
        hub = MessageHub.get_current_instance()
        hub.update_scalar('train/maxgnr.solver_failures', float(self._failures))
        for t, value in self._last_gnr.items():
            hub.update_scalar(f'train/maxgnr.gnr.{t}', value)

    # ------------------------------------------------------------------ interface
    def aggregate(self, grads: Tensor, losses: Tensor, own_norms: Optional[Tensor] = None,
                  tasks: Optional[Sequence[str]] = None) -> AggregateResult:
        tasks = self.tasks_of_rows(len(grads), tasks)
        weights = torch.tensor([self._w.get(t, 1.0) for t in tasks], dtype=grads.dtype)
        grad = weights.to(grads) @ grads
        self._observe(grads, tasks)
        self._step += 1
        if self._step >= self.warmup and (self._step - self.warmup) % self.update_interval == 0:
            self._solve()
        return AggregateResult(grad=grad, weights=weights, own_scales=weights.clone())

    def next_weights(self, tasks: Optional[Sequence[str]] = None) -> Tensor:
        """The weights the next step will use (for logs and tests)."""
        tasks = self.tasks if tasks is None else list(tasks)
        return torch.tensor([self._w.get(t, 1.0) for t in tasks], dtype=torch.float64)

    @property
    def fallbacks(self) -> int:
        """Solves that failed (the best point found or the last weights were used instead)."""
        return self._failures

    @property
    def solver_failures(self) -> int:
        """Solves that did not converge so far (also logged as ``maxgnr.solver_failures``)."""
        return self._failures

    @property
    def last_gnr(self) -> Dict[str, float]:
        """Each task's estimated GNR at the weights of the last solve (logged as ``maxgnr.gnr.{task}``)."""
        return dict(self._last_gnr)

    def state_dict(self) -> Dict:
        return dict(step=self._step, weights=dict(self._w), mean={t: m.detach().cpu() for t, m in self._m.items()},
                    dev=dict(self._dev), Q={a: dict(r) for a, r in self._Q.items()}, solver_failures=self._failures)

    def load_state_dict(self, state: Dict) -> None:
        self._reset_state()
        self._step = int(state.get('step', 0))
        self._w = {k: float(v) for k, v in state.get('weights', {}).items()}
        self._m = {k: v.clone() for k, v in state.get('mean', {}).items()}
        self._dev = {k: float(v) for k, v in state.get('dev', {}).items()}
        self._Q = {a: {b: float(v) for b, v in r.items()} for a, r in state.get('Q', {}).items()}
        self._failures = int(state.get('solver_failures', 0))
