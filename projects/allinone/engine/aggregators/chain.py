"""Methods in sequence: per-task rescalings first (e.g. TBGC's clip), then one combining method."""
from typing import List, Sequence, Union

import torch

from ...registry import AGGREGATORS
from .base import AggregateResult, GradAggregator, TaskScalingAggregator, build_aggregator


@AGGREGATORS.register_module()
class ChainAggregator(GradAggregator):
    """``steps[:-1]`` rescale each task's gradient, ``steps[-1]`` combines the rescaled rows.

    Example, TBGC's per-task clip and then PCGrad's surgery on the clipped gradients::

        aggregator=dict(type='ChainAggregator', steps=[
            dict(type='TBGCAggregator', max_norm=0.1), dict(type='PCGradAggregator')])

    Every step but the last must be a :class:`TaskScalingAggregator` (a per-task factor: TBGC, Equal,
    loss weightings): its factor ``f_t`` multiplies task t's shared gradient (``g_t <- f_t g_t``)
    and its head factor multiplies task t's own gradient, as if the task's loss had been scaled.
    The last step then sees the rescaled rows and the rescaled head norms. The reported weight of
    task t is ``f_t`` times the last step's weight, so ``grad == weights @ grads`` still holds.
    The order is the declared one: a clip after a surgery would be a different method (use the
    optim wrapper's global ``clip_grad`` for a clip of the combined gradient).

    Solver fallbacks of every step (Nash-MTL, CAGrad, MaxGNR) add up in :attr:`fallbacks`, which the
    optim wrapper logs as ``aggregator.fallbacks``.

    Args:
        steps: configs or instances, applied in order.
    """

    def __init__(self, steps: Sequence[Union[dict, GradAggregator]], tasks=None):
        super().__init__(tasks)
        if not isinstance(steps, (list, tuple)) or len(steps) < 2:
            raise ValueError('ChainAggregator.steps must list at least two methods (rescalings, then a combiner), '
                             f'got {steps!r}')
        self.steps: List[GradAggregator] = []
        for i, s in enumerate(steps):
            if not isinstance(s, (dict, GradAggregator)):
                raise ValueError(f'ChainAggregator.steps[{i}] must be an aggregator config dict or instance, got {s!r}')
            self.steps.append(build_aggregator(s))
        for i, s in enumerate(self.steps[:-1]):
            if not isinstance(s, TaskScalingAggregator):
                raise ValueError(f'ChainAggregator.steps[{i}] ({type(s).__name__}) is not a per-task rescaling '
                                 '(TaskScalingAggregator); only the last step may combine the gradients otherwise')

    @property
    def fallbacks(self):
        """Solver fallbacks summed over the steps that have a solver (``None`` if none has)."""
        counts = [s.fallbacks for s in self.steps if s.fallbacks is not None]
        return sum(counts) if counts else None

    def bind(self, tasks):
        super().bind(tasks)
        for s in self.steps:
            s.bind(tasks)

    def aggregate(self, grads, losses, own_norms=None, tasks=None) -> AggregateResult:
        tasks = self.tasks_of_rows(len(grads), tasks)
        own_norms = torch.zeros(len(grads), dtype=grads.dtype) if own_norms is None else own_norms
        shared = torch.ones(len(grads), dtype=torch.float64)
        own = torch.ones(len(grads), dtype=torch.float64)
        rows = grads
        for step in self.steps[:-1]:
            r = step.aggregate(rows, losses, own_norms, tasks)
            f, h = r.weights.to(torch.float64), r.own_scales.to(torch.float64)
            rows = rows * f.to(rows)[:, None]
            own_norms = own_norms * h.abs().to(own_norms)
            shared, own = shared * f, own * h
        r = self.steps[-1].aggregate(rows, losses, own_norms, tasks)
        return AggregateResult(grad=r.grad, weights=(r.weights.to(torch.float64) * shared).to(r.weights.dtype),
                               own_scales=(r.own_scales.to(torch.float64) * own).to(r.own_scales.dtype))

    def state_dict(self):
        return {str(i): s.state_dict() for i, s in enumerate(self.steps)}

    def load_state_dict(self, state):
        for i, s in enumerate(self.steps):
            if str(i) in state:
                s.load_state_dict(state[str(i)])

    def __repr__(self):
        return f"ChainAggregator({' -> '.join(repr(s) for s in self.steps)})"
