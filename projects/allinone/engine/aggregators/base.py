"""The interface every multi-task gradient method implements.

A method sees the per-task gradients of the *shared* parameters, never the model:

    result = method.aggregate(grads, losses, head_norms, tasks)

``grads`` is a ``(T, n)`` matrix (row t: task t's gradient of the shared parameters, flattened,
unscaled), ``losses`` and ``head_norms`` are ``(T,)`` (head_norms: the norm of each task's gradient
on its own, non-shared parameters) and ``tasks`` names the task of each row. The rows are normally
every bound task in bound order, but a task skipped for a non-finite gradient is missing from that
step: stateful methods keep their state by task name and leave a missing task's state as it is. It returns :class:`AggregateResult`: the combined shared
gradient, the effective weight of each task on it (for logs) and the factor applied to each task's
own parameters. Methods that are linear with weights computable one task at a time
(:class:`LinearAggregator`) also run in a streaming mode where the optim wrapper never holds the T
gradients at once; both modes give the same result (tested).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor


@dataclass
class AggregateResult:
    grad: Tensor           # (n,) combined gradient of the shared parameters
    weights: Tensor        # (T,) effective weight of each task on the shared parameters
    head_scales: Tensor    # (T,) factor applied to each task's own (non-shared) gradient


class GradAggregator:
    """Base class. Subclasses implement :meth:`aggregate`; stateful ones override the state dict."""

    #: True when the result is ``scale * sum_t factor_t * g_t`` with factors known task by task
    streaming = False

    def __init__(self, tasks: Optional[Sequence[str]] = None):
        self.tasks: List[str] = list(tasks or [])

    def bind(self, tasks: Sequence[str]) -> None:
        """Called once by the optim wrapper with the task names in pass order."""
        if self.tasks and list(tasks) != self.tasks:
            raise ValueError(f'{type(self).__name__} was configured for tasks {self.tasks} but the '
                             f'model has {list(tasks)}')
        self.tasks = list(tasks)

    def aggregate(self, grads: Tensor, losses: Tensor, head_norms: Optional[Tensor] = None,
                  tasks: Optional[Sequence[str]] = None) -> AggregateResult:
        raise NotImplementedError

    def row_tasks(self, n_rows: int, tasks: Optional[Sequence[str]] = None) -> List[str]:
        """The task names of the ``n_rows`` rows: ``tasks`` if given, else the bound tasks."""
        if tasks is None:
            tasks = self.tasks if len(self.tasks) == n_rows else [f'task{i}' for i in range(n_rows)]
        if len(tasks) != n_rows:
            raise ValueError(f'{type(self).__name__}: {n_rows} gradient rows but tasks {list(tasks)}')
        return list(tasks)

    def state_dict(self) -> Dict:
        return {}

    def load_state_dict(self, state: Dict) -> None:
        pass

    def __repr__(self):
        args = ', '.join(f'{k}={v!r}' for k, v in vars(self).items() if not k.startswith('_') and k != 'tasks')
        return f'{type(self).__name__}({args})'


class LinearAggregator(GradAggregator):
    """``g = s * sum_t f_t g_t``: ``f_t`` from task t's own statistics, ``s`` once all are known.

    Subclasses implement :meth:`task_factor` and optionally :meth:`common_scale` and
    :meth:`head_scale`. :meth:`aggregate` is derived from them, so the streaming path of the optim
    wrapper and the matrix path compute the same thing.
    """

    streaming = True

    def task_factor(self, norm: float, head_norm: float, loss: float, task: Optional[str] = None) -> float:
        """The factor of ``task``'s gradient, from its shared and own gradient norms and its loss."""
        raise NotImplementedError

    def common_scale(self, norms: Tensor, head_norms: Tensor, factors: Tensor) -> float:
        return 1.0

    def head_scales(self, factors: Tensor, scale: float, head_norms: Tensor) -> Tensor:
        """Factor for each task's own parameters; default: the same as on the shared ones."""
        return factors * scale

    def finish(self, norms: Tensor, head_norms: Tensor, factors: Tensor, losses: Optional[Tensor] = None,
               tasks: Optional[Sequence[str]] = None):
        """Once every task's factor is known: ``(weights, head_scales, common scale)``.

        Stateful methods update their state here (it runs once per aggregated step in both modes).
        """
        scale = float(self.common_scale(norms, head_norms, factors))
        return factors * scale, self.head_scales(factors, scale, head_norms), scale

    def aggregate(self, grads: Tensor, losses: Tensor, head_norms: Optional[Tensor] = None,
                  tasks: Optional[Sequence[str]] = None) -> AggregateResult:
        tasks = self.row_tasks(len(grads), tasks)
        norms = torch.linalg.vector_norm(grads, dim=1)
        head_norms = torch.zeros_like(norms) if head_norms is None else head_norms
        factors = torch.tensor([self.task_factor(float(n), float(h), float(l), t)
                                for n, h, l, t in zip(norms, head_norms, losses, tasks)], dtype=grads.dtype)
        weights, head, _ = self.finish(norms, head_norms, factors, losses, tasks)
        return AggregateResult(grad=weights.to(grads) @ grads, weights=weights, head_scales=head)


def build_aggregator(cfg: Union[dict, GradAggregator]) -> GradAggregator:
    """Build from ``dict(type=..., **kwargs)`` (or pass an instance through).

    The aggregators' registry has a scope of its own; looking the class up directly avoids
    mmengine's scope switching (and its warnings under the mmdet default scope).
    """
    if isinstance(cfg, GradAggregator):
        return cfg
    from ...registry import AGGREGATORS
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f'an aggregator config must be a dict with a "type", got {cfg!r}')
    cfg = dict(cfg)
    cfg.pop('_scope_', None)
    kind = cfg.pop('type')
    cls = AGGREGATORS.get(kind) if isinstance(kind, str) else kind
    if cls is None:
        raise KeyError(f'unknown aggregator {kind!r}; registered: {sorted(AGGREGATORS.module_dict)}')
    try:
        obj = cls(**cfg)
    except TypeError as e:
        raise TypeError(f'{kind}: {e}') from e
    if not isinstance(obj, GradAggregator):
        raise TypeError(f'{kind} built {type(obj).__name__}, not a GradAggregator')
    return obj
