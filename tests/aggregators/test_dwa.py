"""Dynamic weight average (DWA): the weights follow the slowest-falling loss, held for a window, and
the loss-weighting family's common contract."""
import pytest
import torch

from projects.allinone.engine.aggregators import DWAAggregator

from agg_props import TASKS
from weighting_props import (
    check_bad_hyperparameter_names_the_argument,
    check_build_from_registry,
    check_missing_task_row_leaves_its_state_alone,
    check_state_dict_round_trip_gives_identical_next_results,
    check_streaming_and_matrix_paths_agree,
    check_trains_through_the_optim_wrapper,
)

NAME = 'DWAAggregator'


def test_dwa_weights_follow_the_slowest_falling_loss():
    agg = DWAAggregator(window=3, temperature=2.0)
    agg.bind(TASKS)
    # det halves every window, seg stays, cls falls by 10% per window
    loss_of = lambda k: torch.tensor([4.0 * 0.5 ** (k // 3), 1.0, 2.0 * 0.9 ** (k // 3)],  # noqa: E731
                                     dtype=torch.float64)
    grads = torch.randn(3, 4, dtype=torch.float64)
    for k in range(6):  # the first two windows: equal weights
        w = agg.aggregate(grads, loss_of(k), None, TASKS).weights
        torch.testing.assert_close(w, torch.ones(3, dtype=torch.float64))
    w = agg.aggregate(grads, loss_of(6), None, TASKS).weights
    expect = 3 * torch.softmax(torch.tensor([0.5, 1.0, 0.9], dtype=torch.float64) / 2.0, 0)
    torch.testing.assert_close(w, expect)
    assert w.argmax() == 1 and w.argmin() == 0
    assert float(w.sum()) == pytest.approx(3.0)
    for k in range(7, 9):  # held for the whole window
        torch.testing.assert_close(agg.aggregate(grads, loss_of(k), None, TASKS).weights, expect)


# ---------------------------------------------------------------------------- the common contract
@pytest.mark.parametrize('name', [NAME])
def test_build_from_registry(name):
    check_build_from_registry(name)


@pytest.mark.parametrize('name', [NAME])
def test_streaming_and_matrix_paths_agree(name):
    check_streaming_and_matrix_paths_agree(name)


@pytest.mark.parametrize('name', [NAME])
def test_state_dict_round_trip_gives_identical_next_results(name):
    check_state_dict_round_trip_gives_identical_next_results(name)


@pytest.mark.parametrize('name', [NAME])
def test_missing_task_row_leaves_its_state_alone(name):
    check_missing_task_row_leaves_its_state_alone(name)


# ids: those of the family's former common table (tests/test_aggregators_weighting.py)
@pytest.mark.parametrize('name,kwargs,arg', [
    pytest.param(NAME, dict(window=0), 'window', id='DWAAggregator-kwargs5-window'),
    pytest.param(NAME, dict(temperature=-2), 'temperature', id='DWAAggregator-kwargs6-temperature'),
])
def test_bad_hyperparameters_name_the_argument(name, kwargs, arg):
    check_bad_hyperparameter_names_the_argument(name, kwargs, arg)


@pytest.mark.parametrize('name', [NAME])
def test_each_method_trains_through_the_optim_wrapper(name):
    check_trains_through_the_optim_wrapper(name)
