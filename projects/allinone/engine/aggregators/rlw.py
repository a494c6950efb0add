"""Random Loss Weighting (Lin, Ye, Zhang and Tsang, TMLR 2022)."""
from typing import Dict, List, Optional, Sequence

import torch

from ...registry import AGGREGATORS
from .base import TaskScalingAggregator, check_number, check_seed


@AGGREGATORS.register_module()
class RLWAggregator(TaskScalingAggregator):
    """Fresh random loss weights every step: ``w = total * softmax(eps)``, ``eps ~ N(0, I_T)``.

    The weights are positive and sum to ``total`` (1 in the paper: ``softmax`` of standard normal
    samples, its default and best-reported distribution, also LibMTL's). A step's weights must be
    known before the first task's backward, so they are drawn in :meth:`combine_factors` for the next step
    (the first at :meth:`bind`, or lazily), one sample per bound task in bound order. A task missing
    from a step just leaves its weight unused.

    Reference: B. Lin, F. Ye, Y. Zhang, I. W. Tsang, "Reasonable Effectiveness of Random Weighting:
    A Litmus Test for Multi-Task Learning", TMLR 2022.

    Args:
        total: the sum of the weights (default 1.0 as in the paper; ``T`` gives the scale of the
            summed loss, which matters with SGD, hardly with Adam).
        seed: seed of the generator the weights are drawn from (default 0). The generator is the
            method's own, never torch's global RNG: every rank of a data-parallel run draws the same
            weights (under ``randomness.diff_rank_seed`` the global RNG differs per rank), nothing
            else the run draws shifts the sequence, and its state is saved in the checkpoint, so a
            resumed run continues it. Two runs that should draw different weights take different
            seeds.

    Departures: none in the weighting; the drawn-but-unused weights of the step in progress are
    saved in the checkpoint so that a resume uses them.
    """

    def __init__(self, total: float = 1.0, seed: int = 0, tasks=None):
        super().__init__(tasks)
        self.total = float(check_number('RLWAggregator', 'total', total, low=0, low_open=True))
        self.seed = check_seed('RLWAggregator', seed)
        self._gen = torch.Generator().manual_seed(seed)
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

    def task_factor(self, norm, own_norm, loss, task=None):
        if task not in self._next:
            if not self.tasks:
                raise RuntimeError('RLWAggregator: bind() the tasks before the streaming path '
                                   '(aggregate() draws for its rows itself)')
            self._ensure(self.tasks)
            if task not in self._next:
                raise KeyError(f'RLWAggregator: unknown task {task!r}; bound tasks {self.tasks}')
        return self._next[task]

    def aggregate(self, grads, losses, own_norms=None, tasks=None):
        self._ensure(self.tasks_of_rows(len(grads), tasks))
        return super().aggregate(grads, losses, own_norms, tasks)

    def combine_factors(self, norms, own_norms, factors, losses=None, tasks=None):
        out = super().combine_factors(norms, own_norms, factors, losses, tasks)
        self._draw(self._next if self._next else self.tasks_of_rows(len(factors), tasks))
        return out

    def next_weights(self, tasks: Optional[List[str]] = None) -> torch.Tensor:
        """The weights the next step will use (drawing them if not drawn yet)."""
        tasks = self.tasks if tasks is None else list(tasks)
        self._ensure(tasks)
        return torch.tensor([self._next[t] for t in tasks], dtype=torch.float64)

    def state_dict(self) -> Dict:
        return dict(next=dict(self._next), generator=self._gen.get_state())

    def load_state_dict(self, state: Dict) -> None:
        self._next = {k: float(v) for k, v in state.get('next', {}).items()}
        if 'generator' in state:
            self._gen.set_state(state['generator'])
