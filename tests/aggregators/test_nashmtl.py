"""Nash-MTL: known answers, the bargaining equation alpha * (K alpha) = 1 solved, the logged and counted
fallback, weights updated every k steps."""
import numpy as np
import pytest

from projects.allinone.engine.aggregators import NashMTLAggregator
from projects.allinone.engine.aggregators import nashmtl as nashmtl_module
from projects.allinone.engine.aggregators._gram import gram_matrix

from gradient_props import (
    G,
    close,
    random_grads,
    run,
)


def test_nash_known_answers():
    r = run(NashMTLAggregator(max_norm=0), G([1, 0], [0, 2]))      # K = diag(1, 4): alpha = (1, 1/2)
    close(r.weights, [1, 0.5]), close(r.own_scales, [1, 0.5]), close(r.grad, [1, 1])
    r = run(NashMTLAggregator(max_norm=1.0), G([1, 0], [0, 2]))    # |d| = sqrt 2 clipped to 1 (shared only)
    close(r.grad.norm(), 1.0), close(r.own_scales, [1, 0.5])
    r = run(NashMTLAggregator(max_norm=0), G([100, 0], [0, 1]))
    close(r.weights, [0.01, 1]), close(r.grad, [1, 1])


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_nash_solves_bargaining_equation(seed):
    grads = random_grads(3, 6, seed, conflict=False)
    r = run(NashMTLAggregator(max_norm=0), grads)
    K = gram_matrix(grads)
    alpha = r.weights.double().numpy()
    assert np.all(alpha > 0)
    close(alpha * (K @ alpha), np.ones(3), atol=1e-5)
    close(r.own_scales, alpha)


def test_nash_fallback_is_logged_and_counted(monkeypatch):
    logged = []
    monkeypatch.setattr(nashmtl_module, 'print_log', lambda msg, **kw: logged.append((msg, kw)))
    agg = NashMTLAggregator(max_norm=0)
    r = run(agg, G([1, 2], [-1, -2]))                 # zero in the hull: no solution
    assert agg.fallbacks == 1 and len(logged) == 1 and 'no solution' in logged[0][0]
    close(r.weights, [1, 1])                          # no good alpha yet: equal weights
    good = run(agg, G([1, 0], [0, 2])).weights
    r = run(agg, G([1, 2], [-1, -2]))
    assert agg.fallbacks == 2 and len(logged) == 2
    close(r.weights, good)                            # the last good alpha
    assert agg.state_dict()['fallbacks'] == 2


def test_nash_update_weights_every():
    agg = NashMTLAggregator(max_norm=0, update_weights_every=2)
    first = run(agg, G([1, 0], [0, 2])).weights
    close(run(agg, G([5, 0], [0, 1])).weights, first)            # reused
    close(run(agg, G([5, 0], [0, 1])).weights, [0.2, 1])         # solved again
