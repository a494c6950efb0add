"""CAGrad: known answers (the official defaults' rescaling and reduction), the worst-case improvement
maximised over the ball (against dense sampling)."""
import numpy as np
import pytest

from projects.allinone.engine.aggregators import CAGradAggregator

from gradient_props import (
    G,
    close,
    random_grads,
    run,
)


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
