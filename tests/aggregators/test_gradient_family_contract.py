"""The common contract of the gradient family (PCGrad, CAGrad, MGDA, IMTL-G, GradVac, Aligned-MTL,
Nash-MTL), checked once for all of them: the weights reproduce the gradient, the state round-trips, a
step without a task, zero gradient rows, a single task, bad hyperparameters named, and a run through
the optim wrapper. Each method's own properties are in ``test_<method>.py``; the checks themselves are
in ``gradient_props``."""
import pytest

from gradient_props import (
    check_bad_hyperparameters,
    check_missing_task_row,
    check_single_task,
    check_state_dict_round_trip,
    check_through_optim_wrapper,
    check_weights_reproduce_grad,
    check_zero_gradient_row,
)

FAMILY = ['PCGradAggregator', 'CAGradAggregator', 'MGDAAggregator', 'IMTLGAggregator', 'GradVacAggregator',
          'AlignedMTLAggregator', 'NashMTLAggregator']

#: hyperparameters each method refuses; ids: those of the family's former common table
BAD = [
    pytest.param(dict(type='PCGradAggregator', reduction='max'), id='cfg0'),
    pytest.param(dict(type='CAGradAggregator', c=-0.1), id='cfg1'),
    pytest.param(dict(type='CAGradAggregator', rescale=3), id='cfg2'),
    pytest.param(dict(type='MGDAAggregator', normalization='norm'), id='cfg3'),
    pytest.param(dict(type='GradVacAggregator', beta=0.0), id='cfg4'),
    pytest.param(dict(type='GradVacAggregator', beta=1.5), id='cfg5'),
    pytest.param(dict(type='AlignedMTLAggregator', scale_mode='max'), id='cfg6'),
    pytest.param(dict(type='AlignedMTLAggregator', task_weights=dict(a=-1)), id='cfg7'),
    pytest.param(dict(type='NashMTLAggregator', update_weights_every=0), id='cfg8'),
    pytest.param(dict(type='NashMTLAggregator', max_norm=-1.0), id='cfg9'),
]


@pytest.mark.parametrize('name', FAMILY)
def test_weights_reproduce_grad(name):
    check_weights_reproduce_grad(name)


@pytest.mark.parametrize('name', FAMILY)
def test_state_dict_round_trip(name):
    check_state_dict_round_trip(name)


@pytest.mark.parametrize('name', FAMILY)
def test_missing_task_row(name):
    check_missing_task_row(name)


@pytest.mark.parametrize('name', FAMILY)
@pytest.mark.parametrize('zero_rows', [[1], [0, 1, 2]])
def test_zero_gradient_row(name, zero_rows):
    check_zero_gradient_row(name, zero_rows)


@pytest.mark.parametrize('name', FAMILY)
def test_single_task(name):
    check_single_task(name)


@pytest.mark.parametrize('cfg', BAD)
def test_bad_hyperparameters(cfg):
    check_bad_hyperparameters(cfg)


def test_every_method_refuses_some_hyperparameter():
    """IMTL-G has none; the table above misses nobody else."""
    assert {p.values[0]['type'] for p in BAD} == set(FAMILY) - {'IMTLGAggregator'}


@pytest.mark.parametrize('name', FAMILY)
def test_through_optim_wrapper(name):
    check_through_optim_wrapper(name)
