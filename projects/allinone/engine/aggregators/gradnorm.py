"""GradNorm (Chen, Badrinarayanan, Lee and Rabinovich, ICML 2018)."""
import math
from typing import Dict, Optional, Tuple

import torch

from ...registry import AGGREGATORS
from ._scalar_optim import ScalarOptimizer
from .base import TaskScalingAggregator, check_number


@AGGREGATORS.register_module()
class GradNormAggregator(TaskScalingAggregator):
    """Learn loss weights so that the weighted task gradients have norms set by training rates.

    With ``G_t = w_t ||g_t||`` (the norm of the weighted task gradient), ``Gbar`` their mean,
    ``Ltilde_t = L_t / L_t(0)`` (loss relative to the task's first loss) and
    ``r_t = Ltilde_t / mean(Ltilde)``, the weights take a gradient step on
    ``L_grad = sum_t |G_t - Gbar r_t^alpha|`` with the target ``Gbar r_t^alpha`` held constant, then
    are renormalised to sum to T. A task that trains more slowly (larger ``r_t``) is pushed to a
    larger gradient norm; with ``alpha = 0`` all ``w_t ||g_t||`` are equalised.

    Reference: Z. Chen, V. Badrinarayanan, C.-Y. Lee, A. Rabinovich, "GradNorm: Gradient
    Normalization for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018.

    Since ``||g_t||`` (the unweighted task gradient) does not depend on ``w``,
    ``dL_grad/dw_t = sign(G_t - target_t) ||g_t||`` in closed form: no double backward through the
    network is needed (double backward is what breaks GradNorm implementations with SyncBN), and
    the method runs streaming, from the norms the optim wrapper measures anyway.

    Args:
        alpha: the restoring-force exponent (default 1.5, the paper's value for NYUv2).
        lr: learning rate of the weight update (default 0.01).
        optimizer: ``'adam'`` (default) or ``'sgd'``. With SGD the step is ``lr * ||g_t||``, so ``lr``
            must match the scale of the gradient norms; Adam is scale free.
        min_weight: weights are clamped at this value before the renormalisation (default 1e-3), so
            that none turns negative.
        reference_steps: ``L_t(0)`` is the mean of the task's first ``reference_steps`` losses, and the
            weights stay at 1 until every task of the step has it (default 1: the paper's first loss).
            LibMTL takes the first epoch's mean the same way. Set it to the learning-rate warm-up where
            a head's loss rises at first: RTMDet's quality-weighted losses start near 0 (the demo's
            detection loss: 0.11 at step 1, ~1.6 at step 50), so with the first loss detection's
            ``Ltilde`` is 4-14 against at most 1 for the others, and GradNorm drives segmentation's
            weight to its floor.

    Departures: ``||g_t||`` is the norm of task t's gradient on *all* shared parameters (what the
    wrapper measures), where the paper uses the last shared layer only (cheaper there; here the full
    norm is free). ``L_t(0)`` is the first loss the aggregator sees for the task (or the mean of its
    first ``reference_steps``). The weights learn with their own optimizer instead of the network's,
    and a step uses the weights of the step before (updated after its gradients are known). Losses
    should be positive (``Ltilde`` is clamped at 0).
    """

    def __init__(self, alpha: float = 1.5, lr: float = 0.01, optimizer: str = 'adam', min_weight: float = 1e-3,
                 reference_steps: int = 1, tasks=None):
        super().__init__(tasks)
        check_number('GradNormAggregator', 'alpha', alpha, low=0)
        check_number('GradNormAggregator', 'min_weight', min_weight, low=0, high=1, low_open=True, high_open=True)
        check_number('GradNormAggregator', 'reference_steps', reference_steps, low=1, integer=True)
        self._opt = ScalarOptimizer(optimizer, lr, owner='GradNormAggregator')
        self.alpha = float(alpha)
        self.lr = float(lr)
        self.optimizer = optimizer
        self.min_weight = float(min_weight)
        self.reference_steps = int(reference_steps)
        self._w: Dict[str, float] = {}
        self._initial_loss: Dict[str, float] = {}
        self._window: Dict[str, Tuple[float, int]] = {}   # task -> (sum, count) of losses before its L_t(0)

    def task_factor(self, norm, own_norm, loss, task=None):
        return self._w.get(task, 1.0)

    def combine_factors(self, norms, own_norms, factors, losses=None, tasks=None):
        out = super().combine_factors(norms, own_norms, factors, losses, tasks)
        if losses is not None and len(factors):
            self._update(self.tasks_of_rows(len(factors), tasks), norms.tolist(), losses.tolist())
        return out

    def _update(self, tasks, norms, losses):
        for t, loss in zip(tasks, losses):
            self._w.setdefault(t, 1.0)
            if t not in self._initial_loss:
                total, count = self._window.get(t, (0.0, 0))
                total, count = total + loss, count + 1
                if count >= self.reference_steps:
                    self._initial_loss[t] = total / count
                    self._window.pop(t, None)
                else:
                    self._window[t] = (total, count)
        if any(t not in self._initial_loss for t in tasks):
            return  # a task is still in its reference window: the weights wait
        rel = [max(loss / self._initial_loss[t], 0.0) if self._initial_loss[t] > 0 else 1.0
               for t, loss in zip(tasks, losses)]
        mean_rel = sum(rel) / len(rel)
        G = [self._w[t] * n for t, n in zip(tasks, norms)]
        G_mean = sum(G) / len(G)
        grads = {}
        for t, g, n, r in zip(tasks, G, norms, rel):
            ratio = r / mean_rel if mean_rel > 0 else 1.0
            target = G_mean * ratio ** self.alpha
            grads[t] = math.copysign(n, g - target) if g != target else 0.0
        total = sum(self._w[t] for t in tasks)  # renormalise the present tasks to their old total
        self._opt.step(self._w, grads)
        for t in tasks:
            self._w[t] = max(self._w[t], self.min_weight)
        new_total = sum(self._w[t] for t in tasks)
        for t in tasks:
            self._w[t] *= total / new_total

    def next_weights(self, tasks: Optional[list] = None) -> torch.Tensor:
        """The weights the next step will use (for logs and tests)."""
        tasks = self.tasks if tasks is None else tasks
        return torch.tensor([self._w.get(t, 1.0) for t in tasks], dtype=torch.float64)

    def state_dict(self) -> Dict:
        return dict(w=dict(self._w), initial_loss=dict(self._initial_loss),
                    window={t: [float(a), int(n)] for t, (a, n) in self._window.items()},
                    optimizer=self._opt.state_dict())

    def load_state_dict(self, state: Dict) -> None:
        self._w = {k: float(v) for k, v in state.get('w', {}).items()}
        self._initial_loss = {k: float(v) for k, v in state.get('initial_loss', {}).items()}
        self._window = {str(t): (float(a), int(n)) for t, (a, n) in state.get('window', {}).items()}
        self._opt.load_state_dict(state.get('optimizer', {}))
