"""CR-MOGM: exponential averaging of a gradient method's weights (Zhou et al., NeurIPS 2022)."""
from typing import Dict, Union

import numpy as np

from ...registry import AGGREGATORS
from ._gram import gram_matrix, make_result
from .base import GradAggregator, build_aggregator, check_number
from .gramian import GramianAggregator


@AGGREGATORS.register_module()
class CRMOGMAggregator(GradAggregator):
    """Any weighting method, its weights smoothed by an exponential moving average across steps.

    "On the Convergence of Stochastic Multi-Objective Gradient Manipulation and Beyond" (Zhou, Zhang,
    Jiang, Zhong, Gu, Zhu; NeurIPS 2022): gradient methods that decide the weights of a step from
    that step's stochastic gradients alone (MGDA, PCGrad, CAGrad, ...) may not converge to a Pareto
    point; averaging the weights over steps fixes it:
    ``lambda_k = alpha lambda_{k-1} + (1 - alpha) lambda_hat_k`` with ``lambda_hat_k`` the wrapped
    method's weights, and the update ``sum_t lambda_{k,t} g_t``. The same average is applied to each
    task's head scale (so a method that scales its heads by its weights, as MGDA, keeps doing so).
    ``lambda_0`` is a task's first ``lambda_hat`` (the first output is the wrapped method's), as TorchJD's
    ``CRMOGMWeighting``. When the wrapped method is a :class:`GramianAggregator` its weights come from
    the Gram matrix formed once here; any other is called as is (one more ``T x n`` product).

    Args:
        method: the wrapped method (config or instance; default MGDA, the paper's main case). Its
            update must be ``weights @ grads`` (not MoCo, DB-MTL, GradDrop).
        alpha: weight of the previous average, in [0, 1] (default 0.9 as TorchJD; 0: the wrapped
            method unchanged, 1: the first weights frozen).

    Departures: a fixed ``alpha`` (the paper's Corollary 1 lets it grow towards 1 as the learning
    rate decays; TorchJD suggests ``1 - lr / lr_0``). The average is kept per task name: a task
    missing from a step keeps its average.
    """

    def __init__(self, method: Union[dict, GradAggregator] = dict(type='MGDAAggregator'), alpha: float = 0.9,
                 tasks=None):
        super().__init__(tasks)
        check_number('CRMOGMAggregator', 'alpha', alpha, low=0, high=1)
        try:
            self.method = build_aggregator(method)
        except (TypeError, KeyError) as err:
            reason = err.args[0] if isinstance(err, KeyError) and err.args else err   # KeyError quotes its text
            raise ValueError(f'CRMOGMAggregator.method: {reason}') from err
        if not getattr(self.method, 'combines_rows', True):
            raise ValueError(f'CRMOGMAggregator.method: {type(self.method).__name__} does not return weights @ grads '
                             '(its update holds momentum or a coordinate-wise mask): nothing to average')
        self.alpha = float(alpha)
        self._weights: Dict[str, float] = {}
        self._heads: Dict[str, float] = {}

    @property
    def fallbacks(self):
        """The wrapped method's solver fallbacks (logged by the optim wrapper), if it counts them."""
        return getattr(self.method, 'fallbacks', None)

    def bind(self, tasks):
        super().bind(tasks)
        self.method.bind(tasks)

    def _smooth(self, avg: Dict[str, float], tasks, values) -> np.ndarray:
        for t, v in zip(tasks, values):
            avg[t] = self.alpha * avg[t] + (1 - self.alpha) * v if t in avg else v
        return np.array([avg[t] for t in tasks])

    def aggregate(self, grads, losses, own_norms=None, tasks=None):
        tasks = self.tasks_of_rows(len(grads), tasks)
        if isinstance(self.method, GramianAggregator):
            loss = np.asarray([float(x) for x in losses], dtype=np.float64)
            out = self.method.weights_from_gram(gram_matrix(grads), loss, tasks)
            w_hat, h_hat = out if isinstance(out, tuple) else (out, np.ones(len(tasks)))
        else:
            r = self.method.aggregate(grads, losses, own_norms, tasks)
            w_hat, h_hat = r.weights.double().cpu().numpy(), r.own_scales.double().cpu().numpy()
        weights = self._smooth(self._weights, tasks, np.asarray(w_hat, dtype=np.float64).tolist())
        heads = self._smooth(self._heads, tasks, np.asarray(h_hat, dtype=np.float64).tolist())
        return make_result(grads, weights, heads)

    def state_dict(self):
        return dict(weights=dict(self._weights), own_scales=dict(self._heads), method=self.method.state_dict())

    def load_state_dict(self, state):
        self._weights = {str(k): float(v) for k, v in state.get('weights', {}).items()}
        heads = state.get('own_scales', state.get('head_scales', {}))  # 'head_scales': older checkpoints
        self._heads = {str(k): float(v) for k, v in heads.items()}
        self.method.load_state_dict(state.get('method', {}))

    def __repr__(self):
        return f'CRMOGMAggregator(alpha={self.alpha}, method={self.method!r})'
