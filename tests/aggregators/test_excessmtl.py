"""ExcessMTL: AdaGrad-preconditioned excess-risk estimates drive exponentiated weights (by hand, step by step)."""
import numpy as np
import pytest
import torch

from projects.allinone.engine.aggregators import ExcessMTLAggregator

from agg_props import G, check_missing_task_untouched, check_round_trip, check_through_wrapper, close, make_stream, run


@pytest.mark.parametrize('eta', [1e-2, 1.0])
def test_recursion_step_by_step(eta):
    agg = ExcessMTLAggregator(robust_step_size=eta)
    S = np.zeros((3, 12))
    w = np.ones(3)
    ref = None
    for grads, losses, tasks in make_stream(5):
        g = grads.numpy()
        S += g ** 2
        e = (g ** 2 / np.sqrt(S + 1e-7)).sum(1)         # g^T diag(1 / sqrt(S)) g
        if ref is None:
            ref = e                                     # the first estimate is the reference, no update
        else:
            w = w * np.exp(eta * e / ref)
            w = w / w.sum() * 3
        r = agg.aggregate(grads, losses, None, tasks)
        close(r.weights, w, rtol=1e-9), close(r.own_scales, w, rtol=1e-9)
        torch.testing.assert_close(r.grad, r.weights @ grads, rtol=0, atol=0)
    assert not np.allclose(w, 1)


def test_the_task_far_from_convergence_gains_weight():
    agg = ExcessMTLAggregator(robust_step_size=0.5)
    run(agg, G([1.0, 1.0], [1.0, 1.0]))
    for _ in range(5):                                   # task 0's gradient stays large, task 1's vanishes
        r = run(agg, G([1.0, 1.0], [0.01, 0.01]))
    assert float(r.weights[0]) > 1.5 > 0.5 > float(r.weights[1])
    close(r.weights.sum(), 2.0)


def test_state_round_trip_and_missing_task():
    stream = make_stream(6)
    check_round_trip(ExcessMTLAggregator, stream)
    before, after = check_missing_task_untouched(ExcessMTLAggregator, stream)
    assert after['log_w']['det'] != before['log_w']['det']


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match='robust_step_size'):
        ExcessMTLAggregator(robust_step_size=0)


def test_through_the_optim_wrapper():
    check_through_wrapper(dict(type='ExcessMTLAggregator', robust_step_size=0.5))
