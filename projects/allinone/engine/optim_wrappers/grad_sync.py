"""The synchronisation seam of :class:`MultiTaskOptimWrapper`: what it asks of data parallel.

:class:`GradSync` is the one-process case: nothing to synchronise. The wrapper always holds one and
calls it at fixed points of every task's backward and of the step, so it has no "is there data
parallel?" branches; ``MultiTaskDistributedDataParallel`` hands the wrapper its ``TaskGradSync`` (a
subclass) once, with :meth:`MultiTaskOptimWrapper.use_grad_sync`.
"""
from typing import Iterable, List, Tuple

from torch import nn


class GradSync:
    """One process: every call is the identity or does nothing.

    ``exact``: the task gradients the aggregator sees are the global ones (``False``: the rank's own,
    approximate data parallel, where the wrapper keeps streaming aggregators on their streaming
    path). ``overlaps``: a task's gradients may still be in flight after its backward; the wrapper
    then reads them at the next task's backward or at the update.
    """

    exact = True
    overlaps = False

    def before_task_backward(self, task: str, shared: List[nn.Parameter], own: List[nn.Parameter],
                             loss_value: float) -> None:
        """Just before ``task``'s backward (its ``.grad`` are all ``None``)."""

    def end_task_backward(self) -> None:
        """Right after ``task``'s backward, before anything else may issue a collective."""

    def after_task_backward(self, task: str, shared: List[nn.Parameter], own: List[nn.Parameter],
                            loss_value: float) -> float:
        """When ``task``'s gradients are needed; returns the loss value to use (e.g. the ranks' mean)."""
        return loss_value

    def task_stats(self, task: str, norm: float, own_norm: float, loss_value: float) -> Tuple[float, float, float]:
        """The (unscaled) norms and loss the aggregator sees, before the non-finite check."""
        return norm, own_norm, loss_value

    def local_weight(self, task: str) -> float:
        """Factor on this rank's local gradient of ``task`` before it enters the sum."""
        return 1.0

    def before_step(self, params: Iterable[nn.Parameter]) -> None:
        """Before the optimizer step (and before AMP's unscale and the global clip)."""

    def average(self, params: Iterable[nn.Parameter]) -> None:
        """Average ``.grad`` of ``params`` over the ranks: learnable state of a method outside the task
        gradients (DR-MGF's importances and fusion coefficients), so every rank takes the same step. A
        parameter with no gradient on any rank keeps ``.grad = None``."""
