"""DB-MTL: EMA of log-loss gradients rescaled to the largest norm, checked step by step by hand."""
import numpy as np
import pytest
import torch

from projects.allinone.engine.aggregators import DBMTLAggregator

from agg_props import G, check_missing_task_untouched, check_round_trip, check_through_wrapper, close, make_stream, run


@pytest.mark.parametrize('beta,sigma', [(0.9, 0.0), (0.5, 0.5)])
def test_recursion_step_by_step(beta, sigma):
    eps = 1e-8
    agg = DBMTLAggregator(beta=beta, beta_sigma=sigma)
    m = np.zeros((3, 12))
    for k, (grads, losses, tasks) in enumerate(make_stream(5), start=1):
        g, L = grads.numpy(), losses.numpy()
        b = beta / k ** sigma
        m = b * m + (1 - b) * g / (L[:, None] + eps)   # gradient of log(L + eps)
        norms = np.linalg.norm(m, axis=1)
        alpha = norms.max() / (norms + 1e-8)
        r = agg.aggregate(grads, losses, None, tasks)
        close(r.grad, alpha @ m, rtol=1e-9)
        close(r.weights, alpha * (1 - b) / (L + eps), rtol=1e-9)
        close(r.own_scales, 1 / (L + eps), rtol=1e-9)
        scaled = alpha[:, None] * m                     # every task's average at the largest norm
        close(np.linalg.norm(scaled, axis=1), np.full(3, norms.max()), rtol=1e-6)


def test_known_answer():
    agg = DBMTLAggregator(beta=0.0)                     # no averaging: one step's log-loss gradients
    r = run(agg, G([3, 0], [0, 1]), losses=[1.0, 0.5])  # log-grads (3, 0), (0, 2): rescaled to norm 3
    close(r.grad, [3, 3], rtol=1e-7), close(r.own_scales, [1, 2], rtol=1e-7)


def test_state_round_trip_and_missing_task():
    stream = make_stream(6)
    check_round_trip(DBMTLAggregator, stream)
    before, after = check_missing_task_untouched(DBMTLAggregator, stream)
    assert not torch.equal(before['m']['cls'], after['m']['cls'])


def test_bad_arguments_name_the_argument():
    for kwargs, arg in ((dict(beta=1.0), 'beta'), (dict(beta_sigma=-0.5), 'beta_sigma'), (dict(eps=0), 'eps')):
        with pytest.raises(ValueError, match=arg):
            DBMTLAggregator(**kwargs)


def test_through_the_optim_wrapper():
    check_through_wrapper(dict(type='DBMTLAggregator'))
