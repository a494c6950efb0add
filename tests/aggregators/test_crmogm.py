"""CR-MOGM: the wrapped method's weights averaged step by step (checked against the recursion by hand)."""
import numpy as np
import pytest
import torch

from projects.allinone.engine.aggregators import CRMOGMAggregator, FairGradAggregator, MGDAAggregator, UPGradAggregator

from agg_props import TASKS, check_missing_task_untouched, check_round_trip, check_through_wrapper, close, make_stream


@pytest.mark.parametrize('inner,alpha', [(MGDAAggregator, 0.9), (UPGradAggregator, 0.5), (FairGradAggregator, 0.7)])
def test_weights_follow_the_exponential_average(inner, alpha):
    agg = CRMOGMAggregator(method=inner(), alpha=alpha)
    plain = inner()
    lam = head = None
    for grads, losses, tasks in make_stream(5):
        ref = plain.aggregate(grads, losses, None, tasks)
        w_hat, h_hat = ref.weights.numpy(), ref.own_scales.numpy()
        lam = w_hat if lam is None else alpha * lam + (1 - alpha) * w_hat    # lambda_0 = first lambda_hat
        head = h_hat if head is None else alpha * head + (1 - alpha) * h_hat
        r = agg.aggregate(grads, losses, None, tasks)
        close(r.weights, lam, rtol=1e-9), close(r.own_scales, head, rtol=1e-9)
        torch.testing.assert_close(r.grad, r.weights @ grads, rtol=0, atol=0)
    assert not np.allclose(lam, w_hat)                  # the average really differs from the last weights


def test_alpha_zero_is_the_wrapped_method_and_one_freezes():
    stream = make_stream(3)
    a, m = CRMOGMAggregator(alpha=0.0), MGDAAggregator()
    for grads, losses, tasks in stream:
        close(a.aggregate(grads, losses, None, tasks).weights, m.aggregate(grads, losses, None, tasks).weights)
    frozen = CRMOGMAggregator(alpha=1.0)
    first = frozen.aggregate(*stream[0][:2], None, stream[0][2]).weights
    for grads, losses, tasks in stream[1:]:
        close(frozen.aggregate(grads, losses, None, tasks).weights, first)


def test_refuses_methods_without_row_weights():
    for name in ('MoCoAggregator', 'DBMTLAggregator', 'GradDropAggregator'):
        with pytest.raises(ValueError, match='method'):
            CRMOGMAggregator(method=dict(type=name))
    with pytest.raises(ValueError, match='alpha'):
        CRMOGMAggregator(alpha=1.5)
    with pytest.raises(ValueError, match="method: unknown aggregator 'MGDA'"):
        CRMOGMAggregator(method=dict(type='MGDA'))


def test_state_round_trip_and_missing_task():
    build = lambda: CRMOGMAggregator(method=dict(type='NashMTLAggregator'), alpha=0.8)  # noqa: E731
    stream = make_stream(6)
    check_round_trip(build, stream)
    before, after = check_missing_task_untouched(build, stream)
    assert after['weights']['det'] != before['weights']['det']
    assert set(after['method']) == set(before['method'])
    assert CRMOGMAggregator(method=dict(type='NashMTLAggregator')).fallbacks == 0   # the wrapped method's count


def test_through_the_optim_wrapper():
    logged = check_through_wrapper(dict(type='CRMOGMAggregator', method=dict(type='MGDAAggregator'), alpha=0.8))
    assert len(TASKS) == len(logged[0])
