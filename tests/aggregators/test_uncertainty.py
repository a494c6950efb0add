"""Uncertainty weighting (UW): the log variance moves to the log loss (or its multiple for the
regression and classification kinds), the SGD step is the analytic gradient, and the loss-weighting
family's common contract."""
import math

import pytest
import torch

from projects.allinone.engine.aggregators import UncertaintyAggregator

from weighting_props import (
    check_bad_hyperparameter_names_the_argument,
    check_build_from_registry,
    check_missing_task_row_leaves_its_state_alone,
    check_state_dict_round_trip_gives_identical_next_results,
    check_streaming_and_matrix_paths_agree,
    check_trains_through_the_optim_wrapper,
)

NAME = 'UncertaintyAggregator'


def test_uncertainty_moves_log_variance_to_log_loss():
    agg = UncertaintyAggregator(lr=0.05)
    agg.bind(['small', 'large'])
    grads = torch.randn(2, 5, dtype=torch.float64)
    losses = torch.tensor([0.5, 20.0], dtype=torch.float64)
    w_first = agg.aggregate(grads, losses, None, ['small', 'large']).weights
    torch.testing.assert_close(w_first, torch.ones(2, dtype=torch.float64))  # s = 0 at the start
    for _ in range(600):
        w = agg.aggregate(grads, losses, None, ['small', 'large']).weights
    for t, loss in zip(['small', 'large'], losses.tolist()):
        assert agg.log_variance(t) == pytest.approx(math.log(loss), abs=0.05)
    assert w[1] < w[0]  # the task with the large loss is weighted down
    torch.testing.assert_close(agg.next_weights(), 1 / losses, rtol=0.06, atol=0)


def test_uncertainty_kinds_have_their_optima():
    agg = UncertaintyAggregator(lr=0.05, kind=dict(r='regression', c='classification'))
    agg.bind(['s', 'r', 'c'])
    losses = torch.full((3,), 3.0, dtype=torch.float64)
    for _ in range(600):
        agg.aggregate(torch.randn(3, 4, dtype=torch.float64), losses, None, ['s', 'r', 'c'])
    assert agg.log_variance('s') == pytest.approx(math.log(3.0), abs=0.05)       # exp(-s) L + s
    assert agg.log_variance('r') == pytest.approx(math.log(3.0), abs=0.05)       # (exp(-s) L + s) / 2
    assert agg.log_variance('c') == pytest.approx(math.log(6.0), abs=0.05)       # exp(-s) L + s / 2
    w = agg.next_weights()
    torch.testing.assert_close(w, torch.tensor([1 / 3, 0.5 / 3, 1 / 6], dtype=torch.float64), rtol=0.06, atol=0)


def test_uncertainty_sgd_step_is_the_analytic_gradient():
    agg = UncertaintyAggregator(lr=0.1, optimizer='sgd', init=0.5)
    agg.bind(['a'])
    agg.aggregate(torch.ones(1, 3), torch.tensor([2.0]), None, ['a'])
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L
    assert agg.log_variance('a') == pytest.approx(0.5 - 0.1 * (1 - math.exp(-0.5) * 2.0))


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
    pytest.param(NAME, dict(kind='poisson'), 'kind', id='UncertaintyAggregator-kwargs2-kind'),
    pytest.param(NAME, dict(lr=0), 'lr', id='UncertaintyAggregator-kwargs3-lr'),
    pytest.param(NAME, dict(optimizer='rmsprop'), 'optimizer', id='UncertaintyAggregator-kwargs4-optimizer'),
])
def test_bad_hyperparameters_name_the_argument(name, kwargs, arg):
    check_bad_hyperparameter_names_the_argument(name, kwargs, arg)


@pytest.mark.parametrize('name', [NAME])
def test_each_method_trains_through_the_optim_wrapper(name):
    # the kinds by this model's task names (unknown names are an error)
    check_trains_through_the_optim_wrapper(name, overrides=dict(kind=dict(a='regression', b='classification')))
