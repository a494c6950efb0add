"""Equal (or fixed) loss weighting."""
from typing import Dict, Optional

from ...registry import AGGREGATORS
from .base import TaskScalingAggregator, check_number


@AGGREGATORS.register_module()
class EqualAggregator(TaskScalingAggregator):
    """Fixed loss weights: ``L = sum_t w_t L_t``, so task t's shared and own gradients are scaled by w_t.

    With no ``weights`` every task has weight 1 (the same as :class:`SumAggregator`); the point of
    this class is the fixed per-task weights, the usual hand-tuned baseline ("Equal" in LibMTL).

    Args:
        weights: ``None`` (default: 1 for every task) or ``{task: weight}`` with finite weights
            >= 0; tasks not named get ``default``.
        default: weight of the tasks not named in ``weights`` (default 1.0).
    """

    def __init__(self, weights: Optional[Dict[str, float]] = None, default: float = 1.0, tasks=None):
        super().__init__(tasks)
        if weights is not None and not (isinstance(weights, dict) and all(isinstance(k, str) for k in weights)):
            raise ValueError(f'EqualAggregator.weights must be None or a dict {{task: weight}}, got {weights!r}')
        for name, w in (weights or {}).items():
            check_number('EqualAggregator', f'weights[{name!r}]', w, low=0)
        check_number('EqualAggregator', 'default', default, low=0)
        self.weights = {str(k): float(v) for k, v in (weights or {}).items()}
        self.default = float(default)

    def bind(self, tasks):
        super().bind(tasks)
        unknown = sorted(set(self.weights) - set(self.tasks))
        if unknown:
            raise ValueError(f'EqualAggregator.weights names tasks {unknown} that the model does not have '
                             f'(tasks: {self.tasks})')

    def task_factor(self, norm, own_norm, loss, task=None):
        return self.weights.get(task, self.default)
