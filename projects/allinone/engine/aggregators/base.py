"""The interface every multi-task gradient method implements.

A method sees the per-task gradients of the *shared* parameters, never the model:

    result = method.aggregate(grads, losses, own_norms, tasks)

``grads`` is a ``(T, n)`` matrix (row t: task t's gradient of the shared parameters, flattened,
unscaled), ``losses`` and ``own_norms`` are ``(T,)`` (own_norms: the norm of each task's gradient
on its own, non-shared parameters) and ``tasks`` names the task of each row. The rows are normally
every bound task in bound order, but a task skipped for a non-finite gradient is missing from that
step: stateful methods keep their state by task name and leave a missing task's state as it is.
It returns :class:`AggregateResult`: the combined shared gradient, the effective weight of each
task on it (for logs) and the factor applied to each task's own parameters. Methods that are linear
with weights computable one task at a time (:class:`TaskScalingAggregator`) also run in a streaming mode
where the optim wrapper never holds the T gradients at once; both modes give the same result
(tested).
"""
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor


# ---------------------------------------------------------------------- argument checks
def _range_text(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return ''


def check_number(owner: str, name: str, value, *, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False,
                 none_ok: bool = False):
    """``value`` if it is a finite number (an int with ``integer``) in the range, else ``ValueError``.

    The message names the argument as ``owner.name`` (e.g. ``TBGCAggregator.max_norm``). Booleans are
    refused (``True`` is an int to python, never a meant threshold), as are NaN and infinities.
    """
    if value is None and none_ok:
        return None
    kind = 'an integer' if integer else 'a finite number'
    ok = not isinstance(value, bool) and isinstance(value, Integral if integer else Real)
    if ok and not integer:
        ok = math.isfinite(float(value))
    if ok:
        ok = not ((low is not None and (value <= low if low_open else value < low))
                  or (high is not None and (value >= high if high_open else value > high)))
    if not ok:
        what = ' '.join(x for x in (kind, _range_text(low, high, low_open, high_open)) if x)
        raise ValueError(f"{owner}.{name} must be {what}{' or None' if none_ok else ''}, got {value!r}")
    return value


def check_choice(owner: str, name: str, value, choices: Sequence):
    """``value`` if it is one of ``choices`` (compared by type and value: ``True`` is not ``1``)."""
    if not any(type(value) is type(c) and value == c for c in choices):
        raise ValueError(f"{owner}.{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_seed(owner: str, value) -> int:
    """A generator seed: an int in ``[0, 2**63)`` (``torch.Generator.manual_seed``'s range)."""
    return check_number(owner, 'seed', value, low=0, high=2 ** 63, high_open=True, integer=True)


@dataclass
class AggregateResult:
    grad: Tensor           # (n,) combined gradient of the shared parameters
    weights: Tensor        # (T,) effective weight of each task on the shared parameters
    own_scales: Tensor    # (T,) factor applied to each task's own (non-shared) gradient


class GradAggregator:
    """Base class. Subclasses implement :meth:`aggregate`; stateful ones override the state dict."""

    #: True when the result is ``scale * sum_t factor_t * g_t`` with factors known task by task
    streaming = False
    #: steps where the method's solver failed and a fallback was used (logged as
    #: ``aggregator.fallbacks``); ``None`` for methods without a solver
    fallbacks: Optional[int] = None

    def __init__(self, tasks: Optional[Sequence[str]] = None):
        if tasks is not None and not (isinstance(tasks, (list, tuple)) and all(isinstance(t, str) for t in tasks)
                                      and len(set(tasks)) == len(tasks)):
            raise ValueError(f'{type(self).__name__}.tasks must be None or a list of distinct task names, '
                             f'got {tasks!r}')
        self.tasks: List[str] = list(tasks or [])

    def bind(self, tasks: Sequence[str]) -> None:
        """Called once by the optim wrapper with the task names in pass order."""
        if self.tasks and list(tasks) != self.tasks:
            raise ValueError(f'{type(self).__name__} was configured for tasks {self.tasks} but the '
                             f'model has {list(tasks)}')
        self.tasks = list(tasks)

    def aggregate(self, grads: Tensor, losses: Tensor, own_norms: Optional[Tensor] = None,
                  tasks: Optional[Sequence[str]] = None) -> AggregateResult:
        raise NotImplementedError

    def tasks_of_rows(self, n_rows: int, tasks: Optional[Sequence[str]] = None) -> List[str]:
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


#: entries per slice of :func:`row_norms` and :func:`tensors_norm`
NORM_CHUNK = 1 << 18


def tensors_norm(tensors: Sequence[Optional[Tensor]]) -> float:
    """The 2-norm of all ``tensors`` together (``None`` skipped), sliced as :func:`row_norms` (see there
    why): one norm per slice of at most ``NORM_CHUNK`` entries, their squares summed in float64. The
    streaming path's per-task norm over the parameters' ``.grad``; the matrix path's is :func:`row_norms`
    over the flat rows, so both paths agree."""
    parts = []
    for t in tensors:
        if t is not None:
            parts.extend(t.reshape(-1).split(NORM_CHUNK) if t.numel() > NORM_CHUNK else [t])
    if not parts:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(parts)).double()))


def row_norms(grads: Tensor, chunk: int = NORM_CHUNK) -> Tensor:
    """The 2-norm of each row of ``(T, n)`` ``grads`` (float64), accurate for rows of any length.

    One float32 ``vector_norm`` over a row of 10^7-10^8 entries loses a good part of the small
    squares into a large running sum (on CPU it accumulates in float32): on the 86M-long rows of a
    ViT-B backbone it came out 1-2% low, so TBGC's matrix path clipped to ~1.017 x ``max_norm``
    while its streaming path (one norm per parameter tensor, combined in float64) gave
    ``max_norm``. Here each slice of ``chunk`` columns is normed in the gradients' dtype and the
    squares are summed in float64, like the per-parameter norms of the optim wrapper.
    """
    T, n = grads.shape
    total = torch.zeros(T, dtype=torch.float64, device=grads.device)
    for start in range(0, n, chunk):
        total += torch.linalg.vector_norm(grads[:, start:start + chunk], dim=1).double().square()
    return total.sqrt().cpu()


class TaskScalingAggregator(GradAggregator):
    """``g = s * sum_t f_t g_t``: ``f_t`` from task t's own statistics, ``s`` once all are known.

    Subclasses implement :meth:`task_factor` and optionally :meth:`common_scale` and
    :meth:`own_scales`. :meth:`aggregate` is derived from them, so the streaming path of the optim
    wrapper and the matrix path compute the same thing.
    """

    streaming = True

    def task_factor(self, norm: float, own_norm: float, loss: float, task: Optional[str] = None) -> float:
        """The factor of ``task``'s gradient, from its shared and own gradient norms and its loss."""
        raise NotImplementedError

    def common_scale(self, norms: Tensor, own_norms: Tensor, factors: Tensor) -> float:
        return 1.0

    def own_scales(self, factors: Tensor, scale: float, own_norms: Tensor) -> Tensor:
        """Factor for each task's own parameters; default: the same as on the shared ones."""
        return factors * scale

    def combine_factors(self, norms: Tensor, own_norms: Tensor, factors: Tensor, losses: Optional[Tensor] = None,
               tasks: Optional[Sequence[str]] = None):
        """Once every task's factor is known: ``(weights, own_scales, common scale)``.

        Stateful methods update their state here (it runs once per aggregated step in both modes).
        """
        scale = float(self.common_scale(norms, own_norms, factors))
        return factors * scale, self.own_scales(factors, scale, own_norms), scale

    def aggregate(self, grads: Tensor, losses: Tensor, own_norms: Optional[Tensor] = None,
                  tasks: Optional[Sequence[str]] = None) -> AggregateResult:
        tasks = self.tasks_of_rows(len(grads), tasks)
        norms = row_norms(grads)
        own_norms = torch.zeros_like(norms) if own_norms is None else own_norms
        factors = torch.tensor([self.task_factor(float(n), float(h), float(l), t)
                                for n, h, l, t in zip(norms, own_norms, losses, tasks)], dtype=grads.dtype)
        weights, head, _ = self.combine_factors(norms, own_norms, factors, losses, tasks)
        return AggregateResult(grad=weights.to(grads) @ grads, weights=weights, own_scales=head)


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
