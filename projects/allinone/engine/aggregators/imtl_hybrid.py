"""IMTL: impartial multi-task learning, the hybrid of IMTL-L and IMTL-G (Liu et al., ICLR 2021)."""
from typing import Dict

import numpy as np

from ...registry import AGGREGATORS
from .gramian import GramianAggregator
from .imtl_l import LossScales

#: relative cut-off of the pseudo-inverse (float32 gradients: Gram entries carry ~1e-7 relative error)
_RCOND = 1e-6


def imtl_g_weights(K: np.ndarray) -> np.ndarray:
    """IMTL-G on a Gram matrix: ``alpha`` with ``sum alpha = 1`` and ``d = sum_t alpha_t g_t`` equally
    projected on every unit gradient (``K alpha`` proportional to the norms): ``alpha ~ K^+ |g|``, the
    generalisation of TorchJD's ``IMTLG`` that also covers linearly dependent gradients. Zero when the
    pseudo-inverse solution sums to (about) zero."""
    top = float(np.max(np.diag(K))) if len(K) else 0.0
    if not top > 0:
        return np.zeros(len(K))
    Kn = K / top
    v = np.linalg.pinv(Kn, rcond=_RCOND, hermitian=True) @ np.sqrt(np.clip(np.diag(Kn), 0.0, None))
    total = float(v.sum())
    return v / total if abs(total) > 1e-12 else np.zeros(len(K))


@AGGREGATORS.register_module()
class IMTLAggregator(GramianAggregator):
    """Learnt loss scales (IMTL-L), then equal projections of the scaled gradients (IMTL-G).

    "Towards Impartial Multi-task Learning" (Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang; ICLR
    2021), the hybrid IMTL of the paper (and LibMTL's ``IMTL``): every task loss is scaled,
    ``e^{s_t} L_t - s_t``; the heads get the scaled gradients ``e^{s_t} grad L_t``; on the shared
    parameters the scaled gradients ``g'_t = e^{s_t} g_t`` are combined by IMTL-G: ``d = sum_t alpha_t g'_t``
    with ``sum_t alpha_t = 1`` and ``d`` equally projected on every ``g'_t / |g'_t|``. The effective weight of
    the raw gradient is ``alpha_t e^{s_t}`` (the direction is IMTL-G's; the scales set its length). After
    the step ``s_t`` takes one optimizer step with the analytic gradient ``e^{s_t} L_t - 1`` (as
    :class:`IMTLLAggregator`). On the Gram matrix: ``K' = D K D`` with ``D = diag(e^s)``.

    Args:
        lr: learning rate of the ``s_t`` update (default 1e-3).
        optimizer: ``'adam'`` (default) or ``'sgd'``.
        init: initial ``s_t`` (default 0.0: at the start this is IMTL-G).

    Departures: ``s_t`` has its own optimizer (the paper: the network's); ``alpha`` comes from the
    pseudo-inverse form ``K'^+ |g'|`` (TorchJD's generalisation; the paper's closed form
    ``g_1 U^T (D U^T)^{-1}`` is the same for linearly independent gradients). A zero shared gradient
    gets ``alpha_t = 0``.
    """

    def __init__(self, lr: float = 1e-3, optimizer: str = 'adam', init: float = 0.0, tasks=None):
        super().__init__(tasks)
        self._scales = LossScales('IMTLAggregator', lr, optimizer, init)
        self.lr, self.optimizer, self.init = float(lr), optimizer, float(init)

    def weights_from_gram(self, K, losses, tasks):
        c = np.array([self._scales.scale(t) for t in tasks])
        alpha = imtl_g_weights(K * np.outer(c, c))
        self._scales.step(tasks, losses.tolist())
        return alpha * c, c

    def state_dict(self) -> Dict:
        return self._scales.state_dict()

    def load_state_dict(self, state: Dict) -> None:
        self._scales.load_state_dict(state)
