"""CAGrad: known answers (the official defaults' rescaling and reduction), the worst-case improvement
maximised over the ball (against dense sampling), and the common contract."""
import numpy as np
import pytest

from projects.allinone.engine.aggregators import CAGradAggregator

from gradient_props import (
    G,
    check_bad_hyperparameters,
    check_missing_task_row,
    check_single_task,
    check_state_dict_round_trip,
    check_through_optim_wrapper,
    check_weights_reproduce_grad,
    check_zero_gradient_row,
    close,
    random_grads,
    run,
)

NAME = 'CAGradAggregator'


def test_cagrad_known_answers():
    # symmetric orthogonal pair: w = (1/2, 1/2), g_w = g0, d = (1 + c) g0
    r = run(CAGradAggregator(c=0.4, rescale=0, reduction='mean'), G([1, 0], [0, 1]))
    close(r.grad, [0.7, 0.7])
    # official defaults: rescale 1 (/(1 + c^2)) and reduction 'sum' (x T)
    r = run(CAGradAggregator(c=0.4), G([1, 0], [0, 1]))
    close(r.grad, [1.4 / 1.16, 1.4 / 1.16])
    close(run(CAGradAggregator(c=0.4, rescale=2), G([1, 0], [0, 1])).grad, [1.4 / 1.4, 1.4 / 1.4])
    # c = 0: the average gradient (x T: the sum)
    grads = random_grads(3, 5)
    close(run(CAGradAggregator(c=0.0), grads).grad, grads.sum(0))
    r = run(CAGradAggregator(), G([1, 2], [-1, -2]))     # g0 = 0: nothing to improve
    close(r.grad, [0, 0]), close(r.own_scales, [1, 1])


@pytest.mark.parametrize('seed,c', [(0, 0.4), (1, 0.4), (2, 0.8)])
def test_cagrad_maximises_worst_case_improvement(seed, c):
    grads = random_grads(3, 3, seed)                 # in R^3 the ball can be sampled densely
    d = run(CAGradAggregator(c=c, rescale=0, reduction='mean'), grads).grad.double().numpy()
    g = grads.double().numpy()
    g0 = g.mean(0)
    radius = c * np.linalg.norm(g0)
    assert np.linalg.norm(d - g0) <= radius * (1 + 1e-5)
    ours = (g @ d).min()
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(200000, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    r = radius * rng.random(200000)[:, None] ** (1 / 3)
    samples = np.concatenate([g0 + radius * u, g0 + r * u])
    best = (samples @ g.T).min(1).max()
    assert best <= ours + 1e-6 * max(1.0, abs(ours))            # nothing in the ball does better
    assert ours - best <= 2e-3 * np.linalg.norm(g, axis=1).max() * radius   # and we reach the top


# ----------------------------------------------------------------------------- the common contract
@pytest.mark.parametrize('name', [NAME])
def test_weights_reproduce_grad(name):
    check_weights_reproduce_grad(name)


@pytest.mark.parametrize('name', [NAME])
def test_state_dict_round_trip(name):
    check_state_dict_round_trip(name)


@pytest.mark.parametrize('name', [NAME])
def test_missing_task_row(name):
    check_missing_task_row(name)


@pytest.mark.parametrize('name', [NAME])
@pytest.mark.parametrize('zero_rows', [[1], [0, 1, 2]])
def test_zero_gradient_row(name, zero_rows):
    check_zero_gradient_row(name, zero_rows)


@pytest.mark.parametrize('name', [NAME])
def test_single_task(name):
    check_single_task(name)


# ids: those of the family's former common table (tests/test_aggregators_gradient.py)
@pytest.mark.parametrize('cfg', [
    pytest.param(dict(type=NAME, c=-0.1), id='cfg1'),
    pytest.param(dict(type=NAME, rescale=3), id='cfg2'),
])
def test_bad_hyperparameters(cfg):
    check_bad_hyperparameters(cfg)


@pytest.mark.parametrize('name', [NAME])
def test_through_optim_wrapper(name):
    check_through_optim_wrapper(name)
