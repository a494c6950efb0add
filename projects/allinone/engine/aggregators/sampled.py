"""Base class of the methods that need independent gradient samples of each task (double sampling).

SDMGrad and MoDo estimate a product of two task-gradient matrices, ``G(xi) G(xi')^T``, from two
*independent* samples so that the estimate is unbiased, and step along a third. AllInOne takes the
samples by splitting each task's batch into ``samples`` parts (``AllInOneModel.train_step`` does it when
the optim wrapper's aggregator asks for ``gradient_samples > 1``): each part has its own forward and
backward, so every image still crosses the backbone once and the step costs T x ``samples`` backward
passes of smaller batches. The optim wrapper hands the method a ``(samples, T, n)`` tensor
(:meth:`SampledGradAggregator.aggregate_samples`); the task's own (non-shared) parameters get the mean
of their parts' gradients (``own_scales = 1 / samples``), i.e. the full batch's gradient.

A method names its sample roles 0, 1, 2; with fewer samples than roles, role r takes sample
``r % samples`` (with ``samples=1``, or through :meth:`aggregate` on a ``(T, n)`` matrix, every role
takes the one sample: the biased single-sample variant).
"""
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from torch import Tensor

from ._gram import make_result, project_simplex
from .base import AggregateResult, GradAggregator, check_number

#: ``cross(a, b)``: ``G(role a) G(role b)^T`` as a float64 numpy (T, T) matrix
Cross = Callable[[int, int], np.ndarray]


class SampledGradAggregator(GradAggregator):
    """``grad = w @ G(role direction_role)`` with ``w`` from cross Gram matrices of independent samples.

    Subclasses set :attr:`direction_role` and implement :meth:`weights_from_samples`.

    Args:
        samples: independent gradient samples per task and step (parts of each task's batch, >= 1).
    """

    streaming = False
    direction_role = 0

    def __init__(self, samples: int = 3, tasks=None):
        super().__init__(tasks)
        self.gradient_samples = check_number(type(self).__name__, 'samples', samples, low=1, integer=True)

    def weights_from_samples(self, cross: Cross, tasks: List[str]) -> np.ndarray:
        raise NotImplementedError

    def aggregate(self, grads: Tensor, losses: Tensor, own_norms: Optional[Tensor] = None,
                  tasks: Optional[Sequence[str]] = None) -> AggregateResult:
        """One sample per task: every role takes it."""
        if grads.dim() != 2:
            raise ValueError(f'{type(self).__name__}: grads must be a (T, n) matrix, got shape {tuple(grads.shape)}')
        return self.aggregate_samples(grads.unsqueeze(0), losses, own_norms, tasks)

    def aggregate_samples(self, samples: Tensor, losses: Tensor, own_norms: Optional[Tensor] = None,
                          tasks: Optional[Sequence[str]] = None) -> AggregateResult:
        """``samples``: ``(k, T, n)``, sample s of task t's shared gradient in ``samples[s, t]``."""
        if samples.dim() != 3:
            raise ValueError(f'{type(self).__name__}: samples must be a (k, T, n) tensor, '
                             f'got shape {tuple(samples.shape)}')
        k, T, _ = samples.shape
        tasks = self.tasks_of_rows(T, tasks)
        cache: Dict[tuple, np.ndarray] = {}

        def cross(a: int, b: int) -> np.ndarray:
            key = (a % k, b % k)
            if key not in cache:
                cache[key] = (samples[key[0]].double() @ samples[key[1]].double().T).cpu().numpy()
            return cache[key]

        weights = self.weights_from_samples(cross, tasks)
        return make_result(samples[self.direction_role % k], weights, np.full(T, 1.0 / k))


class SimplexState:
    """Weights on the simplex kept by task name (a task missing from a step keeps its value); a task seen
    for the first time starts at 1/T. Saved as ``{task: weight}``."""

    def __init__(self):
        self.values: Dict[str, float] = {}

    def vector(self, tasks: List[str]) -> np.ndarray:
        v = np.array([self.values.get(t, 1.0 / len(tasks)) for t in tasks], dtype=np.float64)
        return project_simplex(v)  # the present tasks' weights, on the simplex again

    def store(self, tasks: List[str], v: np.ndarray) -> None:
        self.values.update({t: float(x) for t, x in zip(tasks, v)})

    def state_dict(self) -> Dict[str, float]:
        return dict(self.values)

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self.values = {str(t): float(v) for t, v in state.items()}
