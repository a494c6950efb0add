"""Equal (fixed per-task weights, the plain sum by default): the weights as given on the trunk and
the heads, unknown task names refused, and the loss-weighting family's common contract."""
import pytest
import torch

from projects.allinone.engine.aggregators import EqualAggregator

from agg_props import TASKS
from weighting_props import (
    check_bad_hyperparameter_names_the_argument,
    check_build_from_registry,
    check_missing_task_row_leaves_its_state_alone,
    check_state_dict_round_trip_gives_identical_next_results,
    check_streaming_and_matrix_paths_agree,
    check_trains_through_the_optim_wrapper,
)

NAME = 'EqualAggregator'


def test_equal_fixed_weights():
    agg = EqualAggregator(weights=dict(det=2.0, cls=0.5))
    agg.bind(TASKS)
    grads = torch.randn(3, 7, dtype=torch.float64)
    r = agg.aggregate(grads, torch.ones(3), None, TASKS)
    w = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(r.weights, w)
    torch.testing.assert_close(r.own_scales, w)
    torch.testing.assert_close(r.grad, w @ grads)
    with pytest.raises(ValueError, match='depth'):
        EqualAggregator(weights=dict(depth=1.0)).bind(TASKS)


# ---------------------------------------------------------------------------- the common contract
@pytest.mark.parametrize('name', [NAME])
def test_build_from_registry(name):
    check_build_from_registry(name)


@pytest.mark.parametrize('name', [NAME])
def test_streaming_and_matrix_paths_agree(name):
    check_streaming_and_matrix_paths_agree(name, weights_move=False)


@pytest.mark.parametrize('name', [NAME])
def test_state_dict_round_trip_gives_identical_next_results(name):
    check_state_dict_round_trip_gives_identical_next_results(name)


@pytest.mark.parametrize('name', [NAME])
def test_missing_task_row_leaves_its_state_alone(name):
    check_missing_task_row_leaves_its_state_alone(name, seg_state='none')


# ids: those of the family's former common table (tests/test_aggregators_weighting.py)
@pytest.mark.parametrize('name,kwargs,arg', [
    pytest.param(NAME, dict(weights=dict(det=-1.0)), 'weights', id='EqualAggregator-kwargs0-weights'),
    pytest.param(NAME, dict(weights=[1, 2]), 'weights', id='EqualAggregator-kwargs1-weights'),
])
def test_bad_hyperparameters_name_the_argument(name, kwargs, arg):
    check_bad_hyperparameter_names_the_argument(name, kwargs, arg)


@pytest.mark.parametrize('name', [NAME])
def test_each_method_trains_through_the_optim_wrapper(name):
    check_trains_through_the_optim_wrapper(name, overrides=dict(weights=dict(a=3.0)), weights={(3.0, 1.0)})
