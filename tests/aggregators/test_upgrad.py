"""UPGrad: every projection lies in the dual cone and satisfies the projection's optimality conditions;
the update never conflicts with a task; known answers; the mean when nothing conflicts."""
import numpy as np
import pytest
import torch

from projects.allinone.engine.aggregators import UPGradAggregator
from projects.allinone.engine.aggregators._dual_cone import project_weights
from projects.allinone.engine.aggregators._gram import gram_matrix

from agg_props import G, brute_projection, check_through_wrapper, close, random_grads, run


@pytest.mark.parametrize('T,n,seed', [(3, 6, 0), (3, 6, 1), (4, 3, 2), (5, 40, 3), (2, 5, 4)])
def test_each_projection_meets_the_optimality_conditions(T, n, seed):
    grads = random_grads(T, n, seed)
    J = grads.numpy()
    agg = UPGradAggregator()
    V = agg.projections(gram_matrix(grads), [f't{i}' for i in range(T)])
    scale = float(np.max(np.sum(J ** 2, 1)))
    for i in range(T):
        u = np.eye(T)[i] / T
        d = V[i] @ J                                    # p_i pi(g_i)
        z = V[i] - u
        assert (J @ d).min() >= -1e-9 * scale           # in the dual cone: conflicts with no task
        assert z.min() >= -1e-12                        # d - p_i g_i = J^T z with z >= 0 (the polar cone)
        assert abs(float((J @ d) @ z)) <= 1e-9 * scale  # complementary slackness: d orthogonal to d - p_i g_i
        close(d, brute_projection(J, J[i] / T), atol=1e-6 * np.sqrt(scale))


@pytest.mark.parametrize('seed', range(4))
def test_update_never_conflicts(seed):
    grads = random_grads(4, 9, seed)
    r = run(UPGradAggregator(), grads)
    scale = float(grads.pow(2).sum(1).max())
    assert float((grads @ r.grad).min()) >= -1e-9 * scale
    torch.testing.assert_close(r.grad, r.weights @ grads, rtol=0, atol=0)
    close(r.own_scales, np.ones(4))


def test_known_answers():
    # g2 conflicts with g1: pi(g1) = (0.2, 0.4) on the face g2 . d = 0, pi(g2) = (0, 1) on g1 . d = 0
    r = run(UPGradAggregator(), G([1, 0], [-2, 1]))
    close(r.grad, [0.1, 0.7])
    close(r.weights, [1.5, 0.7])                        # pi(g1) = g1 + 0.4 g2, pi(g2) = 2 g1 + g2, halved
    r = run(UPGradAggregator(), G([1, 2], [-1, -2]))    # opposite: the dual cone is a line orthogonal to both
    close(r.grad, [0, 0], atol=1e-12)
    r = run(UPGradAggregator(pref=dict(task0=2.0)), G([1, 0], [-2, 1]))
    close(r.grad, [0.2, 0.9])                           # (2 pi(g1) + pi(g2)) / 2


def test_no_conflict_gives_the_mean():
    grads = G([1, 0, 0], [1, 1, 0], [0, 1, 1])
    r = run(UPGradAggregator(), grads)
    close(r.grad, grads.mean(0)), close(r.weights, [1 / 3] * 3)


def test_singular_and_zero_gradients():
    grads = random_grads(3, 5, 7)
    grads[2] = grads[0] + grads[1]                      # linearly dependent
    r = run(UPGradAggregator(), grads)
    assert float((grads @ r.grad).min()) >= -1e-9
    grads = random_grads(3, 5, 8)
    grads[1] = 0
    r = run(UPGradAggregator(), grads)
    assert torch.isfinite(r.grad).all() and float((grads @ r.grad).min()) >= -1e-9
    close(project_weights(np.zeros((3, 3)), np.eye(3)), np.eye(3))   # nothing to project against


def test_reg_eps_is_torchjd_regularised_problem():
    grads = random_grads(3, 6, 9)
    K = gram_matrix(grads)
    V = project_weights(K, np.eye(3), reg_eps=1e-4)
    Kn = K / np.trace(K) + 1e-4 * np.eye(3)
    for i in range(3):                                  # KKT of min v^T Kn v, v >= e_i
        z = V[i] - np.eye(3)[i]
        assert (Kn @ V[i]).min() >= -1e-12 and z.min() >= -1e-12 and abs((Kn @ V[i]) @ z) <= 1e-12


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match='reg_eps'):
        UPGradAggregator(reg_eps=-1)
    with pytest.raises(ValueError, match=r"pref\['a'\]"):
        UPGradAggregator(pref=dict(a=-1.0))
    with pytest.raises(ValueError, match=r"pref names tasks \['dett'\]"):   # a typo would do nothing silently
        UPGradAggregator(pref=dict(dett=2.0)).bind(['det', 'seg'])


def test_through_the_optim_wrapper():
    check_through_wrapper(dict(type='UPGradAggregator'))
