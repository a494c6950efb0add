from ...registry import AGGREGATORS
from .base import TaskScalingAggregator


@AGGREGATORS.register_module()
class SumAggregator(TaskScalingAggregator):
    """Vanilla joint training: the task gradients are summed (the gradient of the summed loss).

    With the optim wrapper's ``clip_grad`` this is the challenge baseline (sum of losses, one
    global clip of max norm 0.1). Default aggregator.
    """

    def task_factor(self, norm, own_norm, loss, task=None):
        return 1.0
