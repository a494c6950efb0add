"""Dynamic Weight Average (Liu, Johns and Davison, CVPR 2019)."""
from typing import Dict, List, Optional

import torch

from ...registry import AGGREGATORS
from .base import TaskScalingAggregator, check_number


@AGGREGATORS.register_module()
class DWAAggregator(TaskScalingAggregator):
    """Weight each task by how slowly its loss falls: ``w_t = T softmax_t(r_t / temperature)``.

    ``r_t = Lbar_t(k-1) / Lbar_t(k-2)``, the ratio of task t's mean loss over the last two completed
    windows; a task whose loss falls more slowly (larger ratio) gets a larger weight, and the
    weights sum to T (the number of tasks). The weights are recomputed when a window closes and held
    for the whole next window; during the first two windows every weight is 1.

    Reference: S. Liu, E. Johns, A. J. Davison, "End-to-End Multi-Task Learning with Attention",
    CVPR 2019 (section 3.3).

    Args:
        window: the length of a window in aggregated steps (default 100). The paper averages over
            epochs; AllInOne trains by iterations, so a window of iterations stands in for an epoch.
        temperature: softmax temperature (default 2.0, the paper's value; larger: more uniform).

    Departures: windows of iterations instead of epochs. A task missing from some steps (non-finite
    gradient) is averaged over the steps where it was present; a task with no loss in a window
    keeps its last two window means; a task with fewer than two window means, or whose earlier mean
    is not positive, gets ratio 1.
    """

    def __init__(self, window: int = 100, temperature: float = 2.0, tasks=None):
        super().__init__(tasks)
        check_number('DWAAggregator', 'window', window, low=1, integer=True)
        check_number('DWAAggregator', 'temperature', temperature, low=0, low_open=True)
        self.window = window
        self.temperature = float(temperature)
        self._step = 0                            # aggregated steps so far
        self._sum: Dict[str, float] = {}          # loss sum / count of each task in the open window
        self._count: Dict[str, int] = {}
        self._means: Dict[str, List[float]] = {}  # the last two window means, oldest first
        self._weights: Dict[str, float] = {}      # the weights of the current window

    def task_factor(self, norm, own_norm, loss, task=None):
        return self._weights.get(task, 1.0)

    def combine_factors(self, norms, own_norms, factors, losses=None, tasks=None):
        out = super().combine_factors(norms, own_norms, factors, losses, tasks)
        if losses is not None:
            for t, loss in zip(self.tasks_of_rows(len(factors), tasks), losses.tolist()):
                self._sum[t] = self._sum.get(t, 0.0) + loss
                self._count[t] = self._count.get(t, 0) + 1
        self._step += 1
        if self._step % self.window == 0:
            self._close_window()
        return out

    def _close_window(self):
        for t, n in self._count.items():
            if n:
                self._means[t] = (self._means.get(t, []) + [self._sum[t] / n])[-2:]
        self._sum, self._count = {}, {}
        names = list(dict.fromkeys(list(self.tasks) + list(self._means)))
        if not names:
            return
        ratios = []
        for t in names:
            m = self._means.get(t, [])
            ratios.append(m[1] / m[0] if len(m) == 2 and m[0] > 0 else 1.0)
        w = len(names) * torch.softmax(torch.tensor(ratios, dtype=torch.float64) / self.temperature, 0)
        self._weights = dict(zip(names, w.tolist()))

    def next_weights(self, tasks: Optional[list] = None) -> torch.Tensor:
        """The weights the next step will use (for logs and tests)."""
        tasks = self.tasks if tasks is None else tasks
        return torch.tensor([self._weights.get(t, 1.0) for t in tasks], dtype=torch.float64)

    def state_dict(self) -> Dict:
        return dict(step=self._step, sum=dict(self._sum), count=dict(self._count),
                    means={k: list(v) for k, v in self._means.items()}, weights=dict(self._weights))

    def load_state_dict(self, state: Dict) -> None:
        self._step = int(state.get('step', 0))
        self._sum = {k: float(v) for k, v in state.get('sum', {}).items()}
        self._count = {k: int(v) for k, v in state.get('count', {}).items()}
        self._means = {k: [float(x) for x in v] for k, v in state.get('means', {}).items()}
        self._weights = {k: float(v) for k, v in state.get('weights', {}).items()}
