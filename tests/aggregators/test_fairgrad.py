"""FairGrad: its weights solve the fairness equation K w = w^(-1/alpha); alpha = 1 is Nash-MTL's
equation; known closed forms; the official scaling (T, clip); a logged, counted fallback."""
import math

import numpy as np
import pytest

from projects.allinone.engine.aggregators import FairGradAggregator, NashMTLAggregator
from projects.allinone.engine.aggregators import fairgrad as fairgrad_module
from projects.allinone.engine.aggregators._gram import gram_matrix

from agg_props import G, check_round_trip, check_through_wrapper, close, make_stream, random_grads, run


def solution(agg, grads):
    """``w`` of the equation: the weights without the official factor T (no clip)."""
    return run(agg, grads).weights.double().numpy() / len(grads)


@pytest.mark.parametrize('alpha', [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_weights_solve_the_fairness_equation(alpha, seed):
    grads = random_grads(3, 7, seed, conflict=False)
    grads *= G([1.0], [20.0], [0.05])                   # very different scales
    w = solution(FairGradAggregator(alpha=alpha, max_norm=0), grads)
    K = gram_matrix(grads)
    assert np.all(w > 0)
    close(K @ w, w ** (-1 / alpha), rtol=1e-7)          # (g_t . d) = w_t^(-1/alpha)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_alpha_one_is_nash_mtl(seed):
    grads = random_grads(3, 6, seed, conflict=False)
    w = solution(FairGradAggregator(alpha=1.0, max_norm=0), grads)
    nash = run(NashMTLAggregator(max_norm=0), grads).weights.double().numpy()
    close(w, nash, rtol=2e-5)                           # Nash-MTL solves K a = 1/a to 1e-5


def test_known_answers():
    # orthogonal gradients: K = diag(k), so k w^(1 + 1/alpha) = 1, w = k^(-alpha / (alpha + 1))
    for alpha in (1.0, 2.0, 0.5):
        w = solution(FairGradAggregator(alpha=alpha, max_norm=0), G([1, 0], [0, 2]))
        close(w, [1.0, 4.0 ** (-alpha / (alpha + 1))])
    # official scaling: T * sum_t w_t g_t, shared gradient clipped to max_norm, heads plain
    r = run(FairGradAggregator(alpha=1.0, max_norm=0), G([1, 0], [0, 2]))
    close(r.grad, [2, 2]), close(r.own_scales, [1, 1])
    r = run(FairGradAggregator(alpha=1.0), G([1, 0], [0, 2]))
    close(r.grad, np.array([2, 2]) / math.sqrt(8) * (math.sqrt(8) / (math.sqrt(8) + 1e-6)))


def test_zero_gradient_is_left_out():
    grads = random_grads(3, 5, 3, conflict=False)
    grads[1] = 0
    r = run(FairGradAggregator(max_norm=0), grads)
    assert r.weights[1] == 0
    keep = [0, 2]
    w = r.weights.double().numpy()[keep] / 3
    close(gram_matrix(grads[keep]) @ w, w ** (-1 / 2.0), rtol=1e-7)


def test_no_solution_falls_back_with_a_warning(monkeypatch):
    logged = []
    monkeypatch.setattr(fairgrad_module, 'print_log', lambda msg, **kw: logged.append(msg))
    agg = FairGradAggregator(max_norm=0)
    agg.bind(['a', 'b'])
    r = run(agg, G([1, 2], [-1, -2]))                   # zero is in the cone of the gradients
    assert agg.fallbacks == 1 and 'no solution' in logged[0]
    close(r.weights, [2, 2])                            # no good w yet: 1 each, times T
    good = run(agg, G([1, 0], [0, 2])).weights
    r = run(agg, G([1, 2], [-1, -2]))
    assert agg.fallbacks == 2 and len(logged) == 2
    close(r.weights, good)
    assert agg.state_dict()['fallbacks'] == 2


def test_state_round_trip():
    check_round_trip(lambda: FairGradAggregator(), make_stream(5))


def test_bad_arguments_name_the_argument():
    for kwargs, arg in ((dict(alpha=0), 'alpha'), (dict(alpha=float('inf')), 'alpha'), (dict(max_norm=-1), 'max_norm'),
                        (dict(tol=0), 'tol'), (dict(max_iter=0), 'max_iter')):
        with pytest.raises(ValueError, match=arg):
            FairGradAggregator(**kwargs)


def test_through_the_optim_wrapper():
    check_through_wrapper(dict(type='FairGradAggregator', max_norm=0))
