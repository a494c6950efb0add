"""GradDrop: gradient sign dropout (Chen et al., NeurIPS 2020), on the task gradients as TorchJD."""
import math
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ...registry import AGGREGATORS
from .base import AggregateResult, GradAggregator, check_number
from .upgrad import check_named_tasks


@AGGREGATORS.register_module()
class GradDropAggregator(GradAggregator):
    """Per coordinate, keep only the positive or only the negative task components, drawn by sign purity.

    "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout" (Chen, Ngiam,
    Huang, Luong, Kretzschmar, Chai, Anguelov; NeurIPS 2020, arXiv 2010.06808), Algorithm 1 lines
    10-15, in TorchJD's form (``GradDrop``: applied to the task gradients of the shared parameters).
    Per coordinate j, the positive sign purity ``P_j = (1 + sum_t g_tj / sum_t |g_tj|) / 2`` and a
    uniform draw ``U_j``: if ``P_j > U_j`` the positive components ``g_tj > 0`` are kept and the negative
    ones dropped, if ``P_j < U_j`` the reverse; a task's kept part is
    ``(leak_t + (1 - leak_t) M_tj) g_tj`` and the update is the sum over tasks. A coordinate where all
    tasks agree is never dropped (``P`` is 0 or 1). Computed from sums over the tasks, never per task
    masks: with ``S' = sum_t (1 - leak_t) g_t`` and ``A' = sum_t (1 - leak_t) |g_t|`` the update is
    ``(S' + A') / 2`` where ``P > U``, ``(S' - A') / 2`` where ``P < U``, plus ``sum_t leak_t g_t``
    (about ten elementwise passes over the shared gradient and n uniform draws per step). Heads get
    their plain gradients.

    ``weights`` (logged) are the fraction of each task gradient's norm that survives,
    ``|kept_t| / |g_t|``; the update is a coordinate-wise selection, not ``weights @ grads``.

    Randomness: ``U`` comes from a ``torch.Generator`` on the gradients' device, seeded for every
    step from ``(seed, step)`` (:meth:`step_seed`), so every data-parallel rank draws the same mask, the
    global RNG is not touched, and a resume (the step count is in the state dict) continues the same
    sequence. CPU and CUDA generators give different draws for the same seed.

    Args:
        leak: how much of each task gradient passes unmasked, in [0, 1]: a number for all tasks or
            ``{task: leak}`` (tasks not named: 0). Default 0.0 (the paper's).
        seed: seed of the draws (default 0), an int in [0, 2^31).

    Departures: the paper applies GradDrop to the gradients of a shared activation layer, summed
    over the batch after multiplying by the sign of the input (LibMTL's ``rep_grad`` form); each
    AllInOne task has its own images, so there is no common activation and it runs on the
    parameter gradients, as TorchJD does. ``f`` (a monotone transform of ``P``) is the identity.
    """

    combines_rows = False   # coordinate-wise selection, no weights to average

    def __init__(self, leak: Union[float, Dict[str, float]] = 0.0, seed: int = 0, tasks=None):
        super().__init__(tasks)
        leaks = leak if isinstance(leak, dict) else dict(default=leak)
        for name, value in leaks.items():
            check_number('GradDropAggregator', 'leak' if name == 'default' else f'leak[{name!r}]', value,
                         low=0, high=1)
        check_number('GradDropAggregator', 'seed', seed, low=0, high=2 ** 31, high_open=True, integer=True)
        self.leak = leak
        self.seed = seed
        self._step = 0

    def bind(self, tasks):
        super().bind(tasks)
        if isinstance(self.leak, dict):
            check_named_tasks('GradDropAggregator', 'leak', self.leak, self.tasks)

    def _leak(self, task: str) -> float:
        return float(self.leak.get(task, 0.0) if isinstance(self.leak, dict) else self.leak)

    def step_seed(self) -> int:
        """The seed of this step's draws: 32 bits mixed from ``(seed, step)`` (numpy's ``SeedSequence``;
        torch's CPU generator keeps only the low 32 bits of a seed)."""
        return int(np.random.SeedSequence([self.seed, self._step]).generate_state(1)[0])

    def uniform(self, n: int, like: Tensor) -> Tensor:
        """This step's ``U`` (``n`` draws in [0, 1)) on ``like``'s device, from a generator seeded with
        :meth:`step_seed`."""
        gen = torch.Generator(device=like.device).manual_seed(self.step_seed())
        return torch.rand(n, generator=gen, device=like.device, dtype=like.dtype)

    def aggregate(self, grads: Tensor, losses: Tensor, own_norms: Optional[Tensor] = None,
                  tasks: Optional[Sequence[str]] = None) -> AggregateResult:
        tasks = self.tasks_of_rows(len(grads), tasks)
        T, n = grads.shape
        leaks = [self._leak(t) for t in tasks]
        S = grads.sum(0)
        buf = torch.empty_like(S)                       # one reused n-sized scratch buffer
        A = torch.zeros_like(S)                         # sum_t |g_t|
        Ak = A if not any(leaks) else torch.zeros_like(S)
        for i in range(T):
            torch.abs(grads[i], out=buf)
            A += buf
            if Ak is not A:
                Ak.add_(buf, alpha=1.0 - leaks[i])
        Sk = S if Ak is A else torch.tensor([1.0 - x for x in leaks], dtype=grads.dtype, device=grads.device) @ grads
        # sgn_j = sign(P_j - U_j): +1 keeps the positive components, -1 the negative ones, 0 (P = U) none;
        # P = (1 + S / A) / 2 with 0 / 0 (every task zero there) -> P = 1/2
        sgn = torch.div(S, A).nan_to_num_(0.0).add_(1).mul_(0.5).sub_(self.uniform(n, grads)).sign_()
        self._step += 1
        # kept positive part (Sk + Ak) / 2 where sgn = 1, negative part (Sk - Ak) / 2 where sgn = -1
        grad = Sk.mul_(torch.abs(sgn, out=buf)).addcmul_(sgn, Ak).mul_(0.5)   # S is not needed any more
        if any(leaks):
            grad += torch.tensor(leaks, dtype=grads.dtype, device=grads.device) @ grads
        norms2 = (torch.linalg.vector_norm(grads, dim=1).double() ** 2).tolist()
        kept = torch.empty(T, dtype=torch.float64)
        for i in range(T):  # |kept_i|^2 = l^2 |g_i|^2 + (1 - l^2) |g_i on its kept coordinates|^2
            on_kept = float(torch.linalg.vector_norm(torch.mul(grads[i], sgn, out=buf).clamp_min_(0))) ** 2
            total, leak = norms2[i], leaks[i]       # kept coordinates: sgn_j g_ij > 0
            kept[i] = math.sqrt(leak ** 2 * total + (1 - leak ** 2) * on_kept) / math.sqrt(total) if total > 0 else 0.0
        return AggregateResult(grad=grad, weights=kept.to(grads.dtype), own_scales=torch.ones(T, dtype=grads.dtype))

    def state_dict(self):
        return dict(step=self._step)

    def load_state_dict(self, state):
        self._step = int(state.get('step', 0))
