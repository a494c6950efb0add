"""MoCo: the tracked gradients and lambda follow the recursion of the paper / the authors' code, checked
step by step against a numpy computation; state by task name; the wrapper run."""
import numpy as np
import pytest
import torch

from projects.allinone.engine.aggregators import MoCoAggregator
from projects.allinone.engine.aggregators.moco import project_simplex

from agg_props import TASKS, check_missing_task_untouched, check_round_trip, check_through_wrapper, close, make_stream


def softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


@pytest.mark.parametrize('normalize,update', [('loss', 'softmax'), ('none', 'simplex')])
def test_recursion_step_by_step(normalize, update):
    beta, bs, gamma, gs, rho = 0.5, 0.5, 0.1, 0.5, 0.05
    agg = MoCoAggregator(beta=beta, beta_sigma=bs, gamma=gamma, gamma_sigma=gs, rho=rho, normalize=normalize,
                         lambda_update=update)
    y = np.zeros((3, 12))
    lam = np.full(3, 1 / 3)
    for k, (grads, losses, tasks) in enumerate(make_stream(5), start=1):
        g, L = grads.numpy(), losses.numpy()
        h = g / (np.linalg.norm(g, axis=1, keepdims=True) + 1e-8) * L[:, None] if normalize == 'loss' else g
        b = beta / k ** bs
        y = y - b * (y - h)
        v = lam - gamma / k ** gs * (y @ y.T + rho * np.eye(3)) @ lam
        lam = softmax(v) if update == 'softmax' else project_simplex(v)
        r = agg.aggregate(grads, losses, None, tasks)
        close(r.grad, lam @ y, rtol=1e-9, atol=1e-12)
        coef = L / (np.linalg.norm(g, axis=1) + 1e-8) if normalize == 'loss' else np.ones(3)
        close(r.weights, lam * b * coef, rtol=1e-9)     # the coefficient of this step's own gradient
        close(r.own_scales, np.ones(3))
    assert abs(lam.sum() - 1) < 1e-12 and lam.min() >= 0


def test_project_simplex():
    close(project_simplex(np.array([0.2, 0.3, 0.5])), [0.2, 0.3, 0.5])
    close(project_simplex(np.array([2.0, 0.0, 0.0])), [1, 0, 0])
    close(project_simplex(np.array([1.0, 1.0, -5.0])), [0.5, 0.5, 0])
    rng = np.random.default_rng(0)
    for _ in range(20):                                 # optimality: no other simplex point is closer
        v = rng.normal(size=4) * 2
        p = project_simplex(v)
        q = rng.dirichlet(np.ones(4), size=2000)
        assert np.sum((p - v) ** 2) <= np.min(np.sum((q - v) ** 2, 1)) + 1e-12


def test_state_round_trip_and_missing_task():
    stream = make_stream(6)
    check_round_trip(MoCoAggregator, stream)
    before, after = check_missing_task_untouched(MoCoAggregator, stream)
    assert not torch.equal(before['y']['det'], after['y']['det'])


def test_bad_arguments_name_the_argument():
    for kwargs, arg in ((dict(beta=0), 'beta'), (dict(beta_sigma=-1), 'beta_sigma'), (dict(gamma=0), 'gamma'),
                        (dict(rho=float('inf')), 'rho'), (dict(normalize='l2'), 'normalize'),
                        (dict(lambda_update='mgda'), 'lambda_update')):
        with pytest.raises(ValueError, match=arg):
            MoCoAggregator(**kwargs)


def test_through_the_optim_wrapper():
    logged = check_through_wrapper(dict(type='MoCoAggregator'))
    assert len(logged[0]) == len(TASKS)
