"""Projection onto the dual cone of the task gradients, on their Gram matrix (UPGrad, DualProj).

The dual cone of the rows of ``G`` (``T x n``) is ``{d : G d >= 0}``: the directions that conflict with
no task. Proposition 1 of "Jacobian Descent for Multi-Objective Optimization" (Quinton and Rey,
arXiv 2406.16232): the projection of ``G^T u`` onto it is ``G^T v`` with

    v = argmin_v  v^T K v   subject to  v >= u,     K = G G^T,

a ``T``-variable QP. With ``v = u + z`` and ``K = A^T A`` (``A`` from an eigen-decomposition of ``K``),
this is the non-negative least-squares problem ``min_{z >= 0} |A z + A u|``, solved exactly by
scipy's active-set NNLS (Lawson-Hanson), for any T and for a singular ``K`` (linearly dependent
gradients, a zero gradient) alike.
"""
import numpy as np
from scipy.optimize import nnls


def gram_factor(K: np.ndarray) -> np.ndarray:
    """``A`` (``T x T``) with ``A^T A = K``, from the eigen-decomposition (tiny negative eigenvalues from
    rounding clipped to 0), so a singular ``K`` needs no regularisation."""
    vals, vecs = np.linalg.eigh((K + K.T) / 2)
    return np.sqrt(np.clip(vals, 0.0, None))[:, None] * vecs.T


def project_weights(K: np.ndarray, U: np.ndarray, reg_eps: float = 0.0) -> np.ndarray:
    """``V[i] = argmin_{v >= U[i]} v^T K v`` for every row of ``U`` (``(T,)`` or ``(k, T)``).

    ``G^T V[i]`` is then the projection of ``G^T U[i]`` onto the dual cone of the rows of ``G``. ``K``
    is first divided by its trace (the minimiser does not change); ``reg_eps`` adds ``reg_eps * I``
    to that normalised ``K`` (TorchJD's ``reg_eps``; 0 = the exact projection). A zero ``K`` (every
    gradient zero) gives ``V = U``.
    """
    K = np.asarray(K, dtype=np.float64)
    U = np.asarray(U, dtype=np.float64)
    single = U.ndim == 1
    U = np.atleast_2d(U)
    trace = float(np.trace(K))
    if not trace > 0:
        return U[0].copy() if single else U.copy()
    Kn = K / trace + reg_eps * np.eye(len(K))
    A = gram_factor(Kn)
    V = np.empty_like(U)
    for i, u in enumerate(U):
        z, _ = nnls(A, -(A @ u), maxiter=50 * len(K) + 100)
        V[i] = u + z
    return V[0] if single else V
