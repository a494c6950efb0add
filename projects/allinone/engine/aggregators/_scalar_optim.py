"""A tiny optimizer for the per-task scalars that stateful loss-weighting methods learn.

The aggregators never touch the model, so the few scalars they learn (Uncertainty's log-variances,
GradNorm's weights, FAMO's logits) are updated here, one scalar per task name, with the analytic
gradient the aggregator computes. Adam follows ``torch.optim.Adam`` exactly (coupled L2 weight
decay, bias correction), with one step count per task so that a task missing from a step keeps its
state as it is. State is python floats in dicts keyed by task name (checkpoint friendly).
"""
import math
from typing import Dict

from .base import check_choice, check_number


class ScalarOptimizer:
    """SGD or Adam on a dict of python floats keyed by task name.

    Args:
        kind: ``'adam'`` or ``'sgd'``.
        lr: learning rate (> 0).
        betas: Adam's ``(beta1, beta2)``.
        eps: Adam's epsilon.
        weight_decay: L2 penalty added to the gradient (as ``torch.optim.Adam``/``SGD``).
        owner: the aggregator's name for error messages.
    """

    def __init__(self, kind: str = 'adam', lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, owner: str = 'aggregator'):
        check_choice(owner, 'optimizer', kind, ('adam', 'sgd'))
        check_number(owner, 'lr', lr, low=0, low_open=True)
        check_number(owner, 'weight_decay', weight_decay, low=0)
        if not (isinstance(betas, (list, tuple)) and len(betas) == 2):
            raise ValueError(f'{owner}.betas must be a pair (beta1, beta2), got {betas!r}')
        b1, b2 = (check_number(owner, f'betas[{i}]', b, low=0, high=1, high_open=True) for i, b in enumerate(betas))
        check_number(owner, 'eps', eps, low=0, low_open=True)
        self.kind, self.lr, self.betas, self.eps = kind, float(lr), (float(b1), float(b2)), float(eps)
        self.weight_decay = float(weight_decay)
        self.m: Dict[str, float] = {}
        self.v: Dict[str, float] = {}
        self.t: Dict[str, int] = {}

    def step(self, params: Dict[str, float], grads: Dict[str, float]) -> None:
        """Update ``params[name]`` in place for every ``name`` in ``grads``."""
        b1, b2 = self.betas
        for name, g in grads.items():
            p = params[name]
            g = float(g) + self.weight_decay * p
            if self.kind == 'sgd':
                params[name] = p - self.lr * g
                continue
            t = self.t.get(name, 0) + 1
            m = b1 * self.m.get(name, 0.0) + (1 - b1) * g
            v = b2 * self.v.get(name, 0.0) + (1 - b2) * g * g
            self.t[name], self.m[name], self.v[name] = t, m, v
            m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
            params[name] = p - self.lr * m_hat / (math.sqrt(v_hat) + self.eps)

    def state_dict(self) -> Dict:
        return dict(m=dict(self.m), v=dict(self.v), t=dict(self.t))

    def load_state_dict(self, state: Dict) -> None:
        self.m = {k: float(x) for k, x in state.get('m', {}).items()}
        self.v = {k: float(x) for k, x in state.get('v', {}).items()}
        self.t = {k: int(x) for k, x in state.get('t', {}).items()}
