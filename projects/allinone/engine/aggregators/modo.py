"""MoDo: multi-objective gradient descent with double sampling (Chen, Fernando, Ying, Chen; NeurIPS 2023)."""
from ...registry import AGGREGATORS
from ._gram import project_simplex
from .base import check_number
from .sampled import SampledGradAggregator, SimplexState


@AGGREGATORS.register_module()
class MoDoAggregator(SampledGradAggregator):
    """A stochastic MGDA whose weight update uses two independent gradient samples, so the product it
    descends is unbiased; the step uses a third.

    "Three-Way Trade-Off in Multi-Objective Learning: Optimization, Generalization and
    Conflict-Avoidance" (Chen, Fernando, Ying, Chen; NeurIPS 2023, JMLR 2024, arXiv 2305.20057),
    Algorithm 1: with samples z1, z2, z3 of every task gradient,

        lambda <- Proj_simplex(lambda - gamma (G(z1) G(z2)^T lambda + rho lambda))
        update  = G(z3)^T lambda

    ``lambda`` starts at 1/T and is kept per task name across steps (saved in the checkpoint).

    Args:
        gamma: step size of lambda (default 0.001, LibMTL's default).
        rho: l2 regularisation of lambda's subproblem (default 0.1, LibMTL's default).
        samples: gradient samples per task and step (default 3; parts of each task's batch).

    Departures: the three samples are three parts of one batch per task (the paper draws three
    batches), so each image crosses the backbone once; with ``samples`` < 3 the roles share samples.
    """

    direction_role = 2  # z3; z1, z2 are roles 0 and 1

    def __init__(self, gamma: float = 0.001, rho: float = 0.1, samples: int = 3, tasks=None):
        super().__init__(samples, tasks)
        self.gamma = float(check_number('MoDoAggregator', 'gamma', gamma, low=0, low_open=True))
        self.rho = float(check_number('MoDoAggregator', 'rho', rho, low=0))
        self._lambda = SimplexState()

    def weights_from_samples(self, cross, tasks):
        lam = self._lambda.vector(tasks)
        lam = project_simplex(lam - self.gamma * (cross(0, 1) @ lam + self.rho * lam))
        self._lambda.store(tasks, lam)
        return lam

    def state_dict(self):
        return dict(lambd=self._lambda.state_dict())

    def load_state_dict(self, state):
        self._lambda.load_state_dict(state.get('lambd', {}))
