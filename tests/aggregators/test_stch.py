"""STCH: warm-up on log losses, the nadir from the window, then the closed-form smooth-Tchebycheff
weights T softmax(log(L/z)/mu) / L; autograd of the scalarised loss through the wrapper."""
import math

import numpy as np
import pytest
import torch

from projects.allinone.engine.aggregators import STCHAggregator
from projects.allinone.engine.aggregators import stch as stch_module

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


def stch_weights(losses, nadir, mu):
    a = np.log(np.asarray(losses) / np.asarray(nadir)) / mu
    p = np.exp(a - a.max()) / np.exp(a - a.max()).sum()
    return len(losses) * p / np.asarray(losses)


@pytest.mark.parametrize('mu', [1.0, 0.1, 0.02])
def test_warmup_nadir_then_closed_form(mu):
    agg = STCHAggregator(mu=mu, warmup=4, nadir_steps=2)
    agg.bind(TASKS)
    stream = make_stream(8)
    for k, (grads, losses, tasks) in enumerate(stream):
        r = agg.aggregate(grads, losses, None, tasks)
        if k < 4:
            close(r.weights, 1 / losses.numpy())        # sum log L
        else:
            nadir = (stream[2][1].numpy() + stream[3][1].numpy()) / 2
            close(r.weights, stch_weights(losses.numpy(), nadir, mu), rtol=1e-9)
        close(r.own_scales, r.weights)
        torch.testing.assert_close(r.grad, r.weights @ grads, rtol=0, atol=0)
    close([agg.state_dict()['nadir'][t] for t in TASKS], nadir)


def test_small_mu_is_the_worst_task():
    agg = STCHAggregator(mu=0.01, warmup=1, nadir_steps=1)
    grads = random_grads(3, 4, 0)
    run(agg, grads, losses=[1.0, 1.0, 1.0])            # nadir 1 for all
    r = run(agg, grads, losses=[0.5, 1.2, 0.9])        # task1 furthest above its nadir
    w = r.weights.double().numpy() * np.array([0.5, 1.2, 0.9])
    close(w, [0, 3, 0], atol=1e-6)                     # T p = (0, 3, 0)


def test_missing_nadir_and_missing_task():
    agg = STCHAggregator(warmup=2, nadir_steps=1)
    agg.bind(TASKS)
    stream = make_stream(4)
    agg.aggregate(*stream[0][:2], None, TASKS)
    agg.aggregate(stream[1][0][[0, 2]], stream[1][1][[0, 2]], None, ['det', 'cls'])   # seg absent from the window
    agg.aggregate(*stream[2][:2], None, TASKS)
    assert agg.state_dict()['nadir']['seg'] == pytest.approx(float(stream[2][1][1]))  # its first loss after it
    check_missing_task_untouched(lambda: STCHAggregator(warmup=1, nadir_steps=1), make_stream(5))


def test_out_of_range_exponent_is_clipped_and_counted(monkeypatch):
    logged = []
    monkeypatch.setattr(stch_module, 'print_log', lambda msg, **kw: logged.append(msg))
    agg = STCHAggregator(mu=0.001, warmup=1, nadir_steps=1)
    grads = random_grads(2, 3, 0)
    run(agg, grads, losses=[1.0, 1.0])
    r = run(agg, grads, losses=[1.2, 1.0])             # a = log(1.2) / 0.001 = 182 above the previous step
    assert agg.clipped_steps == 1 and 'float32' in logged[0]
    assert torch.isfinite(r.weights).all() and torch.isfinite(r.grad).all()


def test_state_round_trip():
    check_round_trip(lambda: STCHAggregator(mu=0.5, warmup=2, nadir_steps=1), make_stream(7))


def test_bad_arguments_name_the_argument():
    for kwargs, arg in ((dict(mu=0), 'mu'), (dict(warmup=1, nadir_steps=2), 'warmup'),
                        (dict(nadir_steps=0), 'nadir_steps'), (dict(eps=-1), 'eps')):
        with pytest.raises(ValueError, match=arg):
            STCHAggregator(**kwargs)


def test_streaming_and_matrix_paths_equal_autograd_of_stch():
    mu, T = 0.5, len(TASKS)
    nadir = {}

    def scalarised(losses, step):
        values = torch.stack([losses[t] for t in TASKS])
        if step < 2:                                   # warm-up: sum log L, step 1 is the nadir window
            if step == 1:
                nadir.update({t: float(losses[t]) for t in TASKS})
            return torch.log(values).sum()
        z = torch.tensor([nadir[t] for t in TASKS])
        return T * mu * torch.logsumexp(torch.log(values / z) / mu, 0)

    check_scalariser(dict(type='STCHAggregator', mu=mu, warmup=2, nadir_steps=1), scalarised, steps=5)
    assert math.isfinite(sum(nadir.values()))
