"""GradVac: PCGrad at the first step, the cosine moved to its target (EMA of the measured cosines),
untouched above the target, targets of pairs with a missing task kept."""
import math

import pytest
import torch

from projects.allinone.engine.aggregators import GradVacAggregator
from projects.allinone.engine.aggregators._gram import gram_matrix

from gradient_props import (
    G,
    check_missing_task_row,
    close,
    random_grads,
    run,
)

NAME = 'GradVacAggregator'


def test_gradvac_first_step_is_pcgrad():
    r = run(GradVacAggregator(), G([1, 0], [-1, 1]))
    close(r.grad, [0.5, 1.5])


def test_gradvac_moves_cosine_to_target():
    agg = GradVacAggregator(beta=0.5)
    agg.bind(['a', 'b'])
    agg.load_state_dict(dict(targets=dict(a=dict(b=0.5), b=dict(a=0.5))))
    r = run(agg, G([1, 0], [0, 1]), tasks=['a', 'b'])
    s = 1 / math.sqrt(3)                             # cos(60 deg) = 0.5 needs the other component tan(30)
    close(r.grad, [1 + s, 1 + s]), close(r.weights, [1 + s, 1 + s])
    # the EMA moved half-way from 0.5 to the measured cosine 0
    assert agg.state_dict()['targets']['a']['b'] == pytest.approx(0.25)

    for seed in range(3):                           # general pair: cos(g_i', g_j) reaches the target
        grads = random_grads(2, 6, seed)
        agg = GradVacAggregator()
        agg.load_state_dict(dict(targets=dict(task0=dict(task1=0.3), task1=dict(task0=0.2))))
        C = agg.coefficients(gram_matrix(grads), ['task0', 'task1'])
        adjusted = torch.tensor(C) @ grads.double()
        cos = lambda x, y: float(x @ y / (x.norm() * y.norm()))  # noqa: E731
        assert cos(adjusted[0], grads[1].double()) == pytest.approx(0.3, abs=1e-6)  # float32 Gram
        assert cos(adjusted[1], grads[0].double()) == pytest.approx(0.2, abs=1e-6)


def test_gradvac_above_target_untouched_and_ema():
    agg = GradVacAggregator(beta=0.01)
    grads = G([1, 0], [1, 1])                        # cos 0.707 > target 0: plain sum
    r = run(agg, grads, tasks=['a', 'b'])
    close(r.grad, grads.sum(0))
    assert agg.state_dict()['targets']['a']['b'] == pytest.approx(0.01 * math.sqrt(0.5))


def test_gradvac_missing_task_keeps_pair_targets():
    agg, before = check_missing_task_row(NAME)
    after = agg.state_dict()['targets']  # pairs with the missing task keep their targets
    assert after['b'] == before['targets']['b']
    assert after['a']['b'] == before['targets']['a']['b']
    assert after['a']['c'] != before['targets']['a']['c']
