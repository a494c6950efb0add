"""IMTL (hybrid): IMTL-G's equal projections on the loss-scaled gradients, heads scaled by e^s, and the
scales learnt from e^s L - s (checked step by step by hand)."""
import math

import numpy as np
import pytest
import torch

from projects.allinone.engine.aggregators import IMTLAggregator, IMTLGAggregator

from agg_props import (
    G,
    check_missing_task_untouched,
    check_round_trip,
    check_through_wrapper,
    close,
    make_stream,
    random_grads,
    run,
)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_equal_projections_on_the_scaled_gradients(seed):
    agg = IMTLAggregator(optimizer='sgd', lr=0.3)
    agg.load_state_dict(dict(s=dict(task0=0.5, task1=-1.0, task2=0.2)))
    grads = random_grads(3, 7, seed)
    r = run(agg, grads, losses=[1.0, 2.0, 0.5])
    c = np.exp([0.5, -1.0, 0.2])
    d = r.grad.double()
    unit = grads / grads.norm(dim=1, keepdim=True)
    proj = unit @ d
    close(proj, proj[0].expand(3), rtol=1e-9)           # impartial: equal projection on every unit gradient
    close((r.weights.double().numpy() / c).sum(), 1.0)  # alpha sums to 1 over the scaled gradients
    close(r.own_scales, c)                             # heads: the scaled losses' gradients
    torch.testing.assert_close(r.grad, r.weights @ grads, rtol=0, atol=0)


def test_unit_scales_give_imtl_g():
    grads = random_grads(4, 9, 3)
    close(run(IMTLAggregator(), grads).weights, run(IMTLGAggregator(), grads).weights, rtol=1e-8)


def test_scales_follow_their_gradient_step_by_step():
    lr = 0.2
    agg = IMTLAggregator(optimizer='sgd', lr=lr)
    s = np.zeros(3)
    for grads, losses, tasks in make_stream(4):
        r = agg.aggregate(grads, losses, None, tasks)
        close(r.own_scales, np.exp(s))                 # this step used the scales of the step before
        s = s - lr * (np.exp(s) * losses.numpy() - 1.0)  # d/ds (e^s L - s)
        close([agg.state_dict()['s'][t] for t in tasks], s, rtol=1e-12)


def test_known_answer():
    agg = IMTLAggregator()
    agg.load_state_dict(dict(s=dict(task0=math.log(2.0), task1=0.0)))
    r = run(agg, G([1, 0], [0, 1]))                     # scaled rows (2, 0), (0, 1): IMTL-G alpha = (1/3, 2/3)
    close(r.weights, [2 / 3, 2 / 3]), close(r.grad, [2 / 3, 2 / 3]), close(r.own_scales, [2, 1])


def test_state_round_trip_and_missing_task():
    build = lambda: IMTLAggregator(lr=0.05)  # noqa: E731
    check_round_trip(build, make_stream(6))
    check_missing_task_untouched(build, make_stream(6))


def test_bad_arguments_name_the_argument():
    for kwargs, arg in ((dict(lr=0), 'lr'), (dict(optimizer='rmsprop'), 'optimizer'),
                        (dict(init=float('nan')), 'init')):
        with pytest.raises(ValueError, match=arg):
            IMTLAggregator(**kwargs)


def test_through_the_optim_wrapper():
    logged = check_through_wrapper(dict(type='IMTLAggregator', lr=0.05))
    assert len({tuple(row) for row in logged}) > 1
