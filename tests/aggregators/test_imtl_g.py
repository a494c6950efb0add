"""IMTL-G: known answers, equal projections of the update on every task's unit gradient, and the
common contract."""
import pytest

from projects.allinone.engine.aggregators import IMTLGAggregator

from gradient_props import (
    G,
    check_missing_task_row,
    check_single_task,
    check_state_dict_round_trip,
    check_through_optim_wrapper,
    check_weights_reproduce_grad,
    check_zero_gradient_row,
    close,
    random_grads,
    run,
)

NAME = 'IMTLGAggregator'


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


# ----------------------------------------------------------------------------- the common contract
@pytest.mark.parametrize('name', [NAME])
def test_weights_reproduce_grad(name):
    check_weights_reproduce_grad(name)


@pytest.mark.parametrize('name', [NAME])
def test_state_dict_round_trip(name):
    check_state_dict_round_trip(name)


@pytest.mark.parametrize('name', [NAME])
def test_missing_task_row(name):
    check_missing_task_row(name)


@pytest.mark.parametrize('name', [NAME])
@pytest.mark.parametrize('zero_rows', [[1], [0, 1, 2]])
def test_zero_gradient_row(name, zero_rows):
    check_zero_gradient_row(name, zero_rows)


@pytest.mark.parametrize('name', [NAME])
def test_single_task(name):
    check_single_task(name)


@pytest.mark.parametrize('name', [NAME])
def test_through_optim_wrapper(name):
    check_through_optim_wrapper(name)
