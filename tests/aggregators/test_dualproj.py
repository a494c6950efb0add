"""DualProj: the mean gradient projected onto the dual cone (optimality conditions, known answers)."""
import numpy as np
import pytest

from projects.allinone.engine.aggregators import DualProjAggregator

from agg_props import G, brute_projection, check_through_wrapper, close, random_grads, run


@pytest.mark.parametrize('T,n,seed', [(3, 6, 0), (4, 3, 1), (5, 30, 2)])
def test_projection_of_the_mean(T, n, seed):
    grads = random_grads(T, n, seed)
    J = grads.numpy()
    r = run(DualProjAggregator(), grads)
    d, w = r.grad.numpy(), r.weights.numpy()
    scale = float(np.max(np.sum(J ** 2, 1)))
    z = w - 1.0 / T
    assert (J @ d).min() >= -1e-9 * scale               # conflicts with no task
    assert z.min() >= -1e-12                            # d - mean = J^T z, z >= 0
    assert abs(float((J @ d) @ z)) <= 1e-9 * scale      # complementary slackness
    close(d, brute_projection(J, J.mean(0)), atol=1e-6 * np.sqrt(scale))
    close(r.own_scales, np.ones(T))


def test_known_answers():
    close(run(DualProjAggregator(), G([1, 0], [-2, 1])).grad, [0, 0.5])      # mean (-0.5, 0.5) -> g1 . d = 0
    grads = G([1, 0], [-1, 1])                                              # mean (0, 0.5) conflicts with none
    r = run(DualProjAggregator(), grads)
    close(r.grad, grads.mean(0)), close(r.weights, [0.5, 0.5])
    close(run(DualProjAggregator(pref=dict(task1=3.0)), G([1, 0], [-2, 1])).grad, [0, 1.5])


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match='reg_eps'):
        DualProjAggregator(reg_eps=float('nan'))
    with pytest.raises(ValueError, match='pref'):
        DualProjAggregator(pref=[1, 2])


def test_through_the_optim_wrapper():
    check_through_wrapper(dict(type='DualProjAggregator'))
