"""Aligned-MTL: independent component alignment (Senushkin, Patakin, Kuznetsov, Konushin; CVPR 2023)."""
import numpy as np

from ...registry import AGGREGATORS
from .base import check_choice, check_number
from .gramian import GramianAggregator

#: float32 machine epsilon: the gradients are float32, so smaller eigenvalues are noise
_EPS32 = float(np.finfo(np.float32).eps)


@AGGREGATORS.register_module()
class AlignedMTLAggregator(GramianAggregator):
    """Make the gradient system perfectly conditioned, then sum.

    "Independent Component Alignment for Multi-Task Learning" (arXiv 2305.19000). With the Gram
    matrix ``M = G G^T = V diag(lambda) V^T`` (eigenvalues above ``max(lambda) * T * eps_float32``
    kept: rank R), ``sigma = sqrt(lambda)`` are the singular values of ``G = V diag(sigma) U^T``.
    The aligned gradients ``G_hat = B G`` with ``B = sigma_min V diag(1/sigma) V^T`` are
    ``sigma_min V U^T``: orthogonal, all of norm ``sigma_min`` (condition number 1). The update is
    ``sum_t c_t G_hat_t = w @ G`` with ``w = B c``, ``c`` the pre-defined task weights (all 1 in the
    paper's experiments and code). ``scale_mode`` picks the common singular value:
    ``'min'`` (paper's default), ``'median'`` or ``'rmse'`` (``sqrt(mean(lambda))``), as the
    official code (SamsungLabs/MTL, ``ProcrustesSolver``).

    Args:
        scale_mode: ``'min'`` (default), ``'median'`` (lower median, as ``torch.median``), ``'rmse'``.
        task_weights: None (default: 1 for every task) or ``{task: weight}`` with finite weights
            >= 0: the pre-defined trade-off ``c``; a task not named gets 1, a name that is not a
            task of the model is an error when the tasks are bound.
        scale_heads: False (default, official ``scale_decoder_grad=False``: heads get their plain
            gradients) or True (each task's head is scaled by its weight ``w_t``).

    Departures: eigendecomposition in float64 (numpy) instead of float32. The paper's UB variant
    (gradients w.r.t. a common shared representation) does not apply to AllInOne, where every task
    has its own images. A zero gradient lies in the dropped null space and gets weight 0.
    """

    def __init__(self, scale_mode: str = 'min', task_weights=None, scale_heads: bool = False, tasks=None):
        super().__init__(tasks)
        owner = 'AlignedMTLAggregator'
        if task_weights is not None:
            if not (isinstance(task_weights, dict) and all(isinstance(k, str) for k in task_weights)):
                raise ValueError(f'{owner}.task_weights must be None or a dict {{task: weight}}, got {task_weights!r}')
            for name, w in task_weights.items():
                check_number(owner, f'task_weights[{name!r}]', w, low=0)
        self.scale_mode = check_choice(owner, 'scale_mode', scale_mode, ('min', 'median', 'rmse'))
        self.task_weights = None if task_weights is None else {k: float(v) for k, v in task_weights.items()}
        self.scale_heads = check_choice(owner, 'scale_heads', scale_heads, (False, True))

    def bind(self, tasks):
        super().bind(tasks)
        unknown = sorted(set(self.task_weights or {}) - set(self.tasks))
        if unknown:
            raise ValueError(f'AlignedMTLAggregator.task_weights names tasks {unknown} that the model does not '
                             f'have (tasks: {self.tasks})')

    def weights_from_gram(self, K, losses, tasks):
        T = len(K)
        weights = np.zeros(T)
        top = float(np.max(np.diag(K))) if T else 0.0
        if top > 0:
            lam, V = np.linalg.eigh(K / top)
            keep = lam > lam.max() * T * _EPS32
            lam, V = lam[keep], V[:, keep]
            if self.scale_mode == 'min':
                common = np.sqrt(lam.min())
            elif self.scale_mode == 'median':
                common = np.sqrt(np.sort(lam)[(len(lam) - 1) // 2])
            else:
                common = np.sqrt(lam.mean())
            B = (V * (common / np.sqrt(lam))) @ V.T
            # K was divided by top: sigma scales by sqrt(top), B is scale invariant
            c = np.array([(self.task_weights or {}).get(t, 1.0) for t in tasks])
            weights = B @ c
        return weights, weights if self.scale_heads else None
