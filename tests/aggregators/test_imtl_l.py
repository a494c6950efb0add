"""IMTL-L: factors e^{s_t}, the scale update e^s L - 1 by hand, and autograd of sum e^s L - s through the
wrapper (streaming and matrix paths)."""
import math

import numpy as np
import pytest
import torch

from projects.allinone.engine.aggregators import IMTLLAggregator

from agg_props import (
    TASKS,
    check_missing_task_untouched,
    check_round_trip,
    check_scalariser,
    close,
    make_stream,
    random_grads,
    run,
)


def test_factors_and_sgd_recursion():
    lr = 0.1
    agg = IMTLLAggregator(optimizer='sgd', lr=lr)
    agg.bind(TASKS)
    s = np.zeros(3)
    for grads, losses, tasks in make_stream(4):
        r = agg.aggregate(grads, losses, None, tasks)
        close(r.weights, np.exp(s)), close(r.own_scales, np.exp(s))
        s = s - lr * (np.exp(s) * losses.numpy() - 1.0)
        close(agg.next_weights(), np.exp(s))


def test_scales_converge_to_inverse_losses():
    agg = IMTLLAggregator(optimizer='sgd', lr=0.1)     # the optimum of e^s L - s: every scaled loss is 1
    grads = random_grads(3, 4, 0)
    for _ in range(300):
        run(agg, grads, losses=[4.0, 1.0, 0.25])
    close([agg.log_scale(t) for t in ('task0', 'task1', 'task2')], [-math.log(4.0), 0.0, math.log(4.0)], atol=1e-8)


def test_state_round_trip_and_missing_task():
    build = lambda: IMTLLAggregator(lr=0.05)  # noqa: E731
    check_round_trip(build, make_stream(6))
    check_missing_task_untouched(build, make_stream(6))


def test_bad_arguments_name_the_argument():
    for kwargs, arg in ((dict(lr=-1), 'lr'), (dict(optimizer='adagrad'), 'optimizer'), (dict(init='x'), 'init')):
        with pytest.raises(ValueError, match=arg):
            IMTLLAggregator(**kwargs)


def test_streaming_and_matrix_paths_equal_autograd_of_the_scaled_losses():
    lr = 0.1
    s = {t: 0.0 for t in TASKS}

    def scaled(losses, step):
        total = sum(math.exp(s[t]) * loss - s[t] for t, loss in losses.items())
        for t, loss in losses.items():       # the aggregator's own SGD step on s, after the step
            s[t] -= lr * (math.exp(s[t]) * float(loss) - 1.0)
        return total

    check_scalariser(dict(type='IMTLLAggregator', optimizer='sgd', lr=lr), scaled, streaming_modes=(True,))
    s.update({t: 0.0 for t in TASKS})
    check_scalariser(dict(type='IMTLLAggregator', optimizer='sgd', lr=lr), scaled, streaming_modes=(False,))
    assert torch.isfinite(torch.tensor(list(s.values()))).all()
