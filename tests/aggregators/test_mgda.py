"""MGDA: known answers, the min-norm point of the convex hull (against brute force and its optimality
condition), the many-task solver against the exact one, the normalisations."""
import math

import numpy as np
import pytest
import torch

from projects.allinone.engine.aggregators import MGDAAggregator
from projects.allinone.engine.aggregators._gram import gram_matrix, min_norm_weights

from gradient_props import (
    G,
    close,
    random_grads,
    run,
)


def brute_force_min_norm(grads, steps=200):
    g = grads.double().numpy()
    best = math.inf
    for i in range(steps + 1):
        for j in range(steps + 1 - i):
            w = np.array([i, j, steps - i - j]) / steps
            best = min(best, float(np.sum((w @ g) ** 2)))
    return best


def test_mgda_known_answers():
    agg = MGDAAggregator()
    r = run(agg, G([1, 0], [0, 1]))
    close(r.weights, [0.5, 0.5]), close(r.grad, [0.5, 0.5]), close(r.own_scales, [0.5, 0.5])
    r = run(agg, G([1, 2], [-1, -2]))                    # Pareto stationary: d = 0
    close(r.grad, [0, 0]), close(r.weights, [0.5, 0.5])
    r = run(agg, G([100, 0], [0, 1]))                    # the small gradient dominates the min-norm point
    close(r.weights, [1 / 10001, 10000 / 10001])
    close(r.grad, [100 / 10001, 10000 / 10001])
    r = run(agg, G([1, 0, 0], [0, 1, 0], [0, 0, 1]))
    close(r.weights, [1 / 3] * 3), close(r.grad, [1 / 3] * 3)
    r = run(agg, G([1, 0, 0], [0, 1, 0], [2, 2, 1]))     # third gradient not on the min-norm face
    close(r.grad, [0.5, 0.5, 0]), close(r.weights, [0.5, 0.5, 0])


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_mgda_is_the_min_norm_point(seed):
    grads = random_grads(3, 5, seed)
    r = run(MGDAAggregator(), grads)
    d = r.grad.double()
    norm2 = float(d @ d)
    assert norm2 <= brute_force_min_norm(grads) + 1e-7
    for g in grads.double():                       # optimality: d . g_t >= |d|^2 for every task
        assert float(d @ g) >= norm2 - 1e-6
    assert r.weights.min() >= 0 and float(r.weights.sum()) == pytest.approx(1, abs=1e-6)


def test_mgda_many_tasks_solver_matches_exact():
    torch.manual_seed(3)
    grads = torch.randn(12, 20)
    grads[:4] -= grads[4:8]
    K = gram_matrix(grads)
    exact = min_norm_weights(K, exact_max_tasks=12)
    approx = min_norm_weights(K)                   # SLSQP above 10 tasks
    assert approx @ K @ approx == pytest.approx(exact @ K @ exact, rel=1e-6, abs=1e-9)
    d = torch.tensor(approx) @ grads.double()
    assert all(float(d @ g) >= float(d @ d) - 1e-6 for g in grads.double())


def test_mgda_normalizations():
    grads = G([3, 0], [1, 2])
    losses = [2.0, 0.5]
    norms = grads.double().norm(dim=1).numpy()
    K = gram_matrix(grads)
    for mode, gn in [('l2', norms), ('loss', np.array(losses)), ('loss+', np.array(losses) * norms)]:
        r = run(MGDAAggregator(normalization=mode), grads, losses=losses)
        expected = min_norm_weights(K / np.outer(gn, gn))
        close(r.weights, expected), close(r.own_scales, expected)
        close(r.grad, torch.tensor(expected, dtype=torch.float32) @ grads)   # alpha on the raw gradients
