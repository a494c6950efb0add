"""IMTL-G: known answers, equal projections of the update on every task's unit gradient."""
import pytest

from projects.allinone.engine.aggregators import IMTLGAggregator

from gradient_props import (
    G,
    close,
    random_grads,
    run,
)


def test_imtl_known_answers():
    agg = IMTLGAggregator()
    r = run(agg, G([1, 0], [0, 2]))
    close(r.weights, [2 / 3, 1 / 3]), close(r.grad, [2 / 3, 2 / 3])
    r = run(agg, G([100, 0], [0, 1]))
    close(r.weights, [1 / 101, 100 / 101]), close(r.grad, [100 / 101, 100 / 101])
    r = run(agg, G([1, 2], [-2, -4]))
    close(r.grad, [0, 0], atol=1e-6)
    close(r.own_scales, [1, 1])


@pytest.mark.parametrize('seed', [0, 1])
def test_imtl_equal_projections(seed):
    grads = random_grads(4, 7, seed)
    r = run(IMTLGAggregator(), grads)
    unit = grads.double() / grads.double().norm(dim=1, keepdim=True)
    proj = unit @ r.grad.double()
    close(proj, proj[0].expand(4), atol=1e-5)
    assert float(r.weights.sum()) == pytest.approx(1, abs=1e-6)
