"""GLS: geometric loss strategy, the geometric mean of the task losses (Chennupati et al., CVPRW 2019)."""
import math

import torch

from ...registry import AGGREGATORS
from .base import TaskScalingAggregator, check_number


@AGGREGATORS.register_module()
class GLSAggregator(TaskScalingAggregator):
    """Descend the geometric mean of the losses, ``(prod_t L_t)^(1/T)``.

    "MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss Strategy for Multi-Task
    Learning" (Chennupati, Sistu, Yogamani, Rawashdeh; CVPR 2019 workshops); LibMTL's ``GLS``,
    TorchJD's ``GeometricMean`` scalariser. Its gradient is ``sum_t GLS / (T L_t) grad L_t``: task t's
    gradient (shared and own parameters alike) is scaled by ``1 / (T L_t)`` as its backward ends and
    the sum by ``GLS = exp(mean_t log L_t)`` once every loss is known, so it runs streaming (one
    buffer). A task whose loss is large relative to the others gets a small weight: the product is
    invariant to each loss's scale, so no task dominates by its units.

    Args:
        eps: losses are clamped at ``eps`` (default 1e-8) before the log and the division: the
            geometric mean needs positive losses (TorchJD raises on negative ones; a zero loss would
            make every weight zero and its own infinite).

    Departures: none in the weighting; with a task skipped for a non-finite gradient, the mean is
    over the tasks of the step (T is their number).
    """

    def __init__(self, eps: float = 1e-8, tasks=None):
        super().__init__(tasks)
        check_number('GLSAggregator', 'eps', eps, low=0, low_open=True)
        self.eps = float(eps)

    def _loss(self, loss) -> float:
        loss = float(loss)
        if not math.isfinite(loss):
            raise ValueError(f'GLSAggregator: the geometric mean needs finite losses, got {loss}')
        return max(loss, self.eps)

    def task_factor(self, norm, own_norm, loss, task=None):
        return 1.0 / self._loss(loss)

    def combine_factors(self, norms, own_norms, factors, losses=None, tasks=None):
        if losses is None:
            raise ValueError('GLSAggregator needs the losses of the step')
        logs = [math.log(self._loss(x)) for x in torch.as_tensor(losses).tolist()]
        scale = math.exp(sum(logs) / len(logs)) / len(logs) if logs else 0.0
        return factors * scale, self.own_scales(factors, scale, own_norms), scale
