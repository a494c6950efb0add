"""Base class of the methods whose weights depend on the task gradients through their Gram matrix only.

Such a method (UPGrad, DualProj, FairGrad, ConFIG, IMTL, ...) returns ``w @ grads`` with ``w`` decided
from the ``T x T`` matrix ``K = grads @ grads.T`` (and the losses): the only O(n) work is forming ``K``
and the final combination, both done here once. A subclass implements one method,
:meth:`GramianAggregator.weights_from_gram`, on float64 numpy arrays, so it is testable on hand-made
Gram matrices and cheap whatever the backbone size (as TorchJD's ``GramianWeightedAggregator``).
"""
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from torch import Tensor

from ._gram import gram_matrix, make_result
from .base import AggregateResult, GradAggregator

Weights = Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]


class GramianAggregator(GradAggregator):
    """``grad = w @ grads`` with ``w = weights_from_gram(K, losses, tasks)``, ``K = grads @ grads.T``.

    Subclasses implement :meth:`weights_from_gram`. It returns the ``(T,)`` weights, or a pair
    ``(weights, own_scales)`` when the method also scales each task's own (non-shared) gradient;
    without head scales every head gets its plain gradient (factor 1).
    """

    def weights_from_gram(self, K: np.ndarray, losses: np.ndarray, tasks: List[str]) -> Weights:
        """The weights of the rows from their Gram matrix ``K`` (float64, symmetric) and losses."""
        raise NotImplementedError

    def aggregate(self, grads: Tensor, losses: Tensor, own_norms: Optional[Tensor] = None,
                  tasks: Optional[Sequence[str]] = None) -> AggregateResult:
        if grads.dim() != 2:
            raise ValueError(f'{type(self).__name__}: grads must be a (T, n) matrix, got shape {tuple(grads.shape)}')
        tasks = self.tasks_of_rows(len(grads), tasks)
        loss = np.ones(len(grads)) if losses is None else np.asarray(
            [float(x) for x in losses], dtype=np.float64)
        if len(loss) != len(grads):
            raise ValueError(f'{type(self).__name__}: {len(grads)} gradient rows but {len(loss)} losses')
        out = self.weights_from_gram(gram_matrix(grads), loss, tasks)
        weights, head = out if isinstance(out, tuple) else (out, None)
        return make_result(grads, weights, head)
