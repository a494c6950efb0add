"""SDMGrad: stochastic direction-oriented multi-objective gradient (Xiao, Ban, Ji; NeurIPS 2023)."""
import numpy as np

from ...registry import AGGREGATORS
from ._gram import project_simplex
from .base import check_number
from .sampled import SampledGradAggregator, SimplexState


@AGGREGATORS.register_module()
class SDMGradAggregator(SampledGradAggregator):
    """The update closest to the average gradient among those the min-norm problem allows, from three
    independent gradient samples per task.

    "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic Algorithms" (Xiao, Ban,
    Ji; NeurIPS 2023, arXiv 2305.18409), Algorithm 1 (SDMGrad), as LibMTL runs it from the official code: with samples
    zeta, xi, xi' of every task gradient,

    * ``GG = G(xi) G(xi')^T``, divided by the square of the mean task-gradient norm (``mean_t
      sqrt(max(GG_tt, 0))``); ``Gg = GG 1 / T`` (the products with the average gradient g0);
    * ``niter`` steps of projected SGD with momentum on the simplex, from the previous step's ``w``:
      ``d = GG w + lamda Gg``, ``buf = momentum buf + d`` (``buf`` starts at 0 every step), ``w <-
      Proj_simplex(w - lr buf)``;
    * the update ``(G(zeta)^T w + lamda g0(zeta)) / (1 + lamda)``: ``weights = (w + lamda / T) / (1 +
      lamda)`` on the zeta sample.

    ``lamda`` pulls the direction towards the average gradient (``lamda = 0``: a stochastic MGDA;
    large: the mean). State: ``w`` per task name, saved in the checkpoint.

    Args:
        lamda: the regularisation towards g0 (default 0.3, LibMTL's and the official code's default).
        niter: inner steps on ``w`` per update (default 20).
        lr: step size of the inner SGD on ``d`` (default 5.0, LibMTL's). The official NYUv2 trainer
            steps 10 on the gradient of its objective, ``2 d``: four times this step. With 5.0, ``w``
            sits on a vertex of the simplex at 26 of 30 logged steps of the demo (benchmarks/README.md).
        momentum: its momentum (default 0.5, the official code's).
        samples: gradient samples per task and step (default 3: zeta, xi, xi'; parts of each task's batch).

    Departures: the three samples are three parts of one batch per task (the official code draws three
    batches), so each image crosses the backbone once; with ``samples`` < 3 the roles share samples.
    """

    direction_role = 0  # zeta; xi, xi' are roles 1 and 2

    def __init__(self, lamda: float = 0.3, niter: int = 20, lr: float = 5.0, momentum: float = 0.5,
                 samples: int = 3, tasks=None):
        super().__init__(samples, tasks)
        owner = 'SDMGradAggregator'
        self.lamda = float(check_number(owner, 'lamda', lamda, low=0))
        self.niter = check_number(owner, 'niter', niter, low=1, integer=True)
        self.lr = float(check_number(owner, 'lr', lr, low=0, low_open=True))
        self.momentum = float(check_number(owner, 'momentum', momentum, low=0, high=1, high_open=True))
        self._w = SimplexState()

    def weights_from_samples(self, cross, tasks):
        T = len(tasks)
        GG = cross(1, 2)
        scale = float(np.mean(np.sqrt(np.clip(np.diag(GG), 0.0, None))))
        GG = GG / (scale ** 2 + 1e-8)
        Gg = GG.mean(axis=1)
        w = self._w.vector(tasks)
        buf = np.zeros(T)
        for _ in range(self.niter):
            buf = self.momentum * buf + GG @ w + self.lamda * Gg
            w = project_simplex(w - self.lr * buf)
        self._w.store(tasks, w)
        return (w + self.lamda / T) / (1.0 + self.lamda)

    def state_dict(self):
        return dict(w=self._w.state_dict())

    def load_state_dict(self, state):
        self._w.load_state_dict(state.get('w', {}))
