"""GLS: the geometric mean's closed-form weights, and autograd of (prod L)^(1/T) through the wrapper."""
import math

import pytest
import torch

from projects.allinone.engine.aggregators import GLSAggregator

from agg_props import check_scalariser, close, random_grads, run


def test_closed_form_weights():
    losses = [2.0, 0.5, 8.0]
    grads = random_grads(3, 5, 0)
    r = run(GLSAggregator(), grads, losses=losses)
    gls = (2.0 * 0.5 * 8.0) ** (1 / 3)                  # = 2
    expected = [gls / (3 * x) for x in losses]
    close(r.weights, expected), close(r.own_scales, expected)
    torch.testing.assert_close(r.grad, r.weights @ grads, rtol=0, atol=0)


def test_scale_invariance_of_the_direction():
    grads = random_grads(3, 5, 1)
    a = run(GLSAggregator(), grads, losses=[1.0, 2.0, 3.0]).weights
    b = run(GLSAggregator(), grads, losses=[1.0, 2000.0, 3.0]).weights   # task 1's loss in other units
    close(b[[0, 2]] / a[[0, 2]], [10.0, 10.0], rtol=1e-12)             # GLS grows by 1000^(1/3) = 10 ...
    close(b[1] / a[1], 0.01, rtol=1e-12)                                # ... and task 1's 1/L shrinks 1000x


def test_zero_loss_is_clamped_and_bad_values_rejected():
    r = run(GLSAggregator(eps=1e-6), random_grads(2, 3, 2), losses=[0.0, 4.0])
    assert torch.isfinite(r.weights).all()
    close(r.weights, [math.sqrt(1e-6 * 4) / (2 * 1e-6), math.sqrt(1e-6 * 4) / 8])
    with pytest.raises(ValueError, match='finite losses'):
        run(GLSAggregator(), random_grads(2, 3, 2), losses=[float('nan'), 1.0])
    with pytest.raises(ValueError, match='eps'):
        GLSAggregator(eps=0)


def test_streaming_and_matrix_paths_equal_autograd_of_the_geometric_mean():
    def geometric_mean(losses, step):
        values = torch.stack(list(losses.values()))
        return values.prod() ** (1 / len(values))
    check_scalariser(dict(type='GLSAggregator'), geometric_mean)
