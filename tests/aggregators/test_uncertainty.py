"""Uncertainty weighting (UW): the log variance moves to the log loss (or its multiple for the
regression and classification kinds), the SGD step is the analytic gradient."""
import math

import pytest
import torch

from projects.allinone.engine.aggregators import UncertaintyAggregator


def test_uncertainty_moves_log_variance_to_log_loss():
    agg = UncertaintyAggregator(lr=0.05)
    agg.bind(['small', 'large'])
    grads = torch.randn(2, 5, dtype=torch.float64)
    losses = torch.tensor([0.5, 20.0], dtype=torch.float64)
    w_first = agg.aggregate(grads, losses, None, ['small', 'large']).weights
    torch.testing.assert_close(w_first, torch.ones(2, dtype=torch.float64))  # s = 0 at the start
    for _ in range(600):
        w = agg.aggregate(grads, losses, None, ['small', 'large']).weights
    for t, loss in zip(['small', 'large'], losses.tolist()):
        assert agg.log_variance(t) == pytest.approx(math.log(loss), abs=0.05)
    assert w[1] < w[0]  # the task with the large loss is weighted down
    torch.testing.assert_close(agg.next_weights(), 1 / losses, rtol=0.06, atol=0)


def test_uncertainty_kinds_have_their_optima():
    agg = UncertaintyAggregator(lr=0.05, kind=dict(r='regression', c='classification'))
    agg.bind(['s', 'r', 'c'])
    losses = torch.full((3,), 3.0, dtype=torch.float64)
    for _ in range(600):
        agg.aggregate(torch.randn(3, 4, dtype=torch.float64), losses, None, ['s', 'r', 'c'])
    assert agg.log_variance('s') == pytest.approx(math.log(3.0), abs=0.05)       # exp(-s) L + s
    assert agg.log_variance('r') == pytest.approx(math.log(3.0), abs=0.05)       # (exp(-s) L + s) / 2
    assert agg.log_variance('c') == pytest.approx(math.log(6.0), abs=0.05)       # exp(-s) L + s / 2
    w = agg.next_weights()
    torch.testing.assert_close(w, torch.tensor([1 / 3, 0.5 / 3, 1 / 6], dtype=torch.float64), rtol=0.06, atol=0)


def test_uncertainty_sgd_step_is_the_analytic_gradient():
    agg = UncertaintyAggregator(lr=0.1, optimizer='sgd', init=0.5)
    agg.bind(['a'])
    agg.aggregate(torch.ones(1, 3), torch.tensor([2.0]), None, ['a'])
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L
    assert agg.log_variance('a') == pytest.approx(0.5 - 0.1 * (1 - math.exp(-0.5) * 2.0))
