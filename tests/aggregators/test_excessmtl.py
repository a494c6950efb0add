"""ExcessMTL: AdaGrad-preconditioned excess-risk estimates drive exponentiated weights (by hand, step by step)."""
import numpy as np
import pytest
import torch

from projects.allinone.engine.aggregators import ExcessMTLAggregator

from agg_props import G, check_missing_task_untouched, check_round_trip, check_through_wrapper, close, make_stream, run


@pytest.mark.parametrize('eta, window', [(1e-2, 1), (1.0, 1), (1.0, 3)])
def test_recursion_step_by_step(eta, window):
    agg = ExcessMTLAggregator(robust_step_size=eta, reference_steps=window)
    S = np.zeros((3, 12))
    w = np.ones(3)
    estimates = []
    for k, (grads, losses, tasks) in enumerate(make_stream(7)):
        g = grads.numpy()
        S += g ** 2
        e = (g ** 2 / np.sqrt(S + 1e-7)).sum(1)         # g^T diag(1 / sqrt(S)) g
        if k < window:
            estimates.append(e)                         # the reference window: no update
            ref = np.mean(estimates, 0)
        else:
            w = w * np.exp(eta * e / ref)
            w = w / w.sum() * 3
        r = agg.aggregate(grads, losses, None, tasks)
        close(r.weights, w, rtol=1e-9), close(r.own_scales, w, rtol=1e-9)
        torch.testing.assert_close(r.grad, r.weights @ grads, rtol=0, atol=0)
        if k < window:
            close(r.weights, np.ones(3), rtol=0)
    assert not np.allclose(w, 1)


def growing_head_stream(steps, seed=0):
    """Task 0's gradient grows 150x over its first 15 steps (a detection head warming up), then holds;
    tasks 1 and 2 keep theirs (noisy, fixed scale)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(steps):
        scale = torch.tensor([0.02 * 150 ** min(k / 14, 1.0), 0.6, 0.8], dtype=torch.float64)
        grads = scale[:, None] * (1 + 0.3 * torch.randn(3, 16, generator=g, dtype=torch.float64))
        out.append((grads, torch.ones(3, dtype=torch.float64), ['det', 'seg', 'cls']))
    return out


def test_a_reference_window_keeps_a_warming_head_from_taking_all_the_weight():
    """With the first estimate as reference, the head whose gradient grows 150x takes all the weight
    (as measured on the demo's RTMDet head); with the reference over the warm-up the weights stay
    within a factor of a few of each other, and each follows the same rule after the window."""
    stream = growing_head_stream(60)
    first = ExcessMTLAggregator(robust_step_size=1e-2)
    warm = ExcessMTLAggregator(robust_step_size=1e-2, reference_steps=15)
    for grads, losses, tasks in stream:
        wf = first.aggregate(grads, losses, None, tasks).weights
        ww = warm.aggregate(grads, losses, None, tasks).weights
    assert float(wf[0]) > 2.99 and float(wf[1:].max()) < 1e-3
    assert float(ww.max() / ww.min()) < 5 and float(ww.min()) > 0.3
    close(ww.sum(), 3.0)


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
    check_round_trip(lambda: ExcessMTLAggregator(reference_steps=5), stream)   # resumed inside the window
    before, after = check_missing_task_untouched(ExcessMTLAggregator, stream)
    assert after['log_w']['det'] != before['log_w']['det']


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match='robust_step_size'):
        ExcessMTLAggregator(robust_step_size=0)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match='reference_steps'):
            ExcessMTLAggregator(reference_steps=bad)


def test_through_the_optim_wrapper():
    check_through_wrapper(dict(type='ExcessMTLAggregator', robust_step_size=0.5))
    logged = check_through_wrapper(dict(type='ExcessMTLAggregator', robust_step_size=0.5, reference_steps=2), steps=5)
    assert logged[0] == logged[1] == [1.0, 1.0, 1.0] and logged[2] != logged[1]   # the window, then updates
