"""ConFIG: equal cosines with every task gradient, length = sum of the projections; the Gram form
equals the paper's pseudo-inverse of the unit-vector matrix."""
import numpy as np
import pytest
import torch

from projects.allinone.engine.aggregators import ConFIGAggregator

from agg_props import G, check_through_wrapper, close, random_grads, run


def paper_config(grads, pref=None):
    """Equation 2 of the paper on the explicit vectors: g_u = U^+ p normalised, length sum_t g_t . g_u."""
    g = grads.double().numpy()
    U = g / np.linalg.norm(g, axis=1, keepdims=True)
    p = np.ones(len(g)) if pref is None else np.asarray(pref, dtype=np.float64)
    direction = np.linalg.pinv(U) @ p
    unit = direction / np.linalg.norm(direction)
    return (g @ unit).sum() * unit


@pytest.mark.parametrize('T,n,seed', [(2, 5, 0), (3, 6, 1), (4, 9, 2), (3, 3, 3)])
def test_equal_cosines_and_length(T, n, seed):
    grads = random_grads(T, n, seed)
    r = run(ConFIGAggregator(), grads)
    d = r.grad.double()
    cos = (grads @ d) / (grads.norm(dim=1) * d.norm())
    close(cos, cos[0].expand(T), rtol=1e-9)             # the same cosine to every task ...
    assert float(cos[0]) > 0                            # ... and positive: no conflict
    close(d.norm(), float((grads @ (d / d.norm())).sum()), rtol=1e-9)   # length = sum of the projections
    close(d, paper_config(grads), rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(r.grad, r.weights @ grads, rtol=0, atol=0)
    close(r.own_scales, np.ones(T))


def test_known_answers():
    close(run(ConFIGAggregator(), G([1, 0], [0, 1])).grad, [1, 1])      # direction (1,1)/sqrt2, length sqrt2
    close(run(ConFIGAggregator(), G([2, 0], [0, 1])).grad, [1.5, 1.5])  # same direction, length 3/sqrt2
    # (1, 0) and (-1, 1): U d = 1 gives d ~ (1, 1 + sqrt2); the length brings it to (1, 1 + sqrt2) / (2 sqrt2)
    close(run(ConFIGAggregator(), G([1, 0], [-1, 1])).grad, np.array([1, 1 + np.sqrt(2)]) / (2 * np.sqrt(2)))


def test_preference_sets_the_relative_cosines():
    grads = random_grads(3, 6, 5)
    pref = dict(task1=2.0)
    d = run(ConFIGAggregator(pref=pref), grads).grad.double()
    unit = grads / grads.norm(dim=1, keepdim=True)
    cos = unit @ d
    close(cos / cos[0], [1, 2, 1], rtol=1e-9)
    close(d, paper_config(grads, [1, 2, 1]), rtol=1e-7, atol=1e-10)


def test_zero_gradient_gets_no_weight():
    grads = random_grads(3, 6, 6)
    grads[2] = 0
    r = run(ConFIGAggregator(), grads)
    assert r.weights[2] == 0
    close(r.grad, paper_config(grads[:2]), rtol=1e-7)
    close(run(ConFIGAggregator(), torch.zeros(2, 3, dtype=torch.float64)).grad, [0, 0, 0])


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match='rcond'):
        ConFIGAggregator(rcond=1.5)


def test_through_the_optim_wrapper():
    check_through_wrapper(dict(type='ConFIGAggregator'))
