"""Random Loss Weighting (Lin, Ye, Zhang and Tsang, TMLR 2022)."""
import math
from typing import Dict, List, Optional, Sequence

import torch

from ...registry import AGGREGATORS
from .base import LinearAggregator


@AGGREGATORS.register_module()
class RLWAggregator(LinearAggregator):
    """Fresh random loss weights every step: ``w = total * softmax(eps)``, ``eps ~ N(0, I_T)``.

    The weights are positive and sum to ``total`` (1 in the paper: ``softmax`` of standard normal
    samples, its default and best-reported distribution, also LibMTL's). A step's weights must be
    known before the first task's backward, so they are drawn in :meth:`finish` for the next step
    (the first at :meth:`bind`, or lazily), one sample per bound task in bound order. A task missing
    from a step just leaves its weight unused.

    Reference: B. Lin, F. Ye, Y. Zhang, I. W. Tsang, "Reasonable Effectiveness of Random Weighting:
    A Litmus Test for Multi-Task Learning", TMLR 2022.

    Args:
        total: the sum of the weights (default 1.0 as in the paper; ``T`` gives the scale of the
            summed loss, which matters with SGD, hardly with Adam).
        seed: ``None`` (default): draw from torch's global RNG, so a run is reproducible under
            ``torch.manual_seed``/mmengine's seed. An int: draw from a private generator seeded with
            it, whose state is saved in the checkpoint, so a resumed run continues the same sequence
            (mmengine does not restore the global RNG on resume) and all ranks of a distributed run
            draw the same weights whatever else uses the global RNG.

    Departures: none in the weighting; the drawn-but-unused weights of the step in progress are
    saved in the checkpoint so that a resume uses them.
    """

    def __init__(self, total: float = 1.0, seed: Optional[int] = None, tasks=None):
        super().__init__(tasks)
        if not (isinstance(total, (int, float)) and math.isfinite(total) and total > 0):
            raise ValueError(f'RLWAggregator.total must be a finite number > 0, got {total!r}')
        if seed is not None and not isinstance(seed, int):
            raise ValueError(f'RLWAggregator.seed must be None or an int, got {seed!r}')
        self.total = float(total)
        self.seed = seed
        self._gen = None if seed is None else torch.Generator().manual_seed(seed)
        self._next: Dict[str, float] = {}   # the weights of the next (or current) step

    def _draw(self, tasks: Sequence[str]) -> None:
        tasks = list(tasks)
        eps = torch.randn(len(tasks), dtype=torch.float64, generator=self._gen)
        self._next = dict(zip(tasks, (self.total * torch.softmax(eps, 0)).tolist()))

    def _ensure(self, tasks: Sequence[str]) -> None:
        if not all(t in self._next for t in tasks):
            self._draw(list(dict.fromkeys(list(self.tasks) + list(tasks))))

    def bind(self, tasks):
        super().bind(tasks)
        self._ensure(self.tasks)

    def task_factor(self, norm, head_norm, loss, task=None):
        if task not in self._next:
            if not self.tasks:
                raise RuntimeError('RLWAggregator: bind() the tasks before the streaming path '
                                   '(aggregate() draws for its rows itself)')
            self._ensure(self.tasks)
            if task not in self._next:
                raise KeyError(f'RLWAggregator: unknown task {task!r}; bound tasks {self.tasks}')
        return self._next[task]

    def aggregate(self, grads, losses, head_norms=None, tasks=None):
        self._ensure(self.row_tasks(len(grads), tasks))
        return super().aggregate(grads, losses, head_norms, tasks)

    def finish(self, norms, head_norms, factors, losses=None, tasks=None):
        out = super().finish(norms, head_norms, factors, losses, tasks)
        self._draw(self._next if self._next else self.row_tasks(len(factors), tasks))
        return out

    def next_weights(self, tasks: Optional[List[str]] = None) -> torch.Tensor:
        """The weights the next step will use (drawing them if not drawn yet)."""
        tasks = self.tasks if tasks is None else list(tasks)
        self._ensure(tasks)
        return torch.tensor([self._next[t] for t in tasks], dtype=torch.float64)

    def state_dict(self) -> Dict:
        state = dict(next=dict(self._next))
        if self._gen is not None:
            state['generator'] = self._gen.get_state()
        return state

    def load_state_dict(self, state: Dict) -> None:
        self._next = {k: float(v) for k, v in state.get('next', {}).items()}
        if self._gen is not None and 'generator' in state:
            self._gen.set_state(state['generator'])
