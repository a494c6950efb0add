"""FAMO: the closed-form weights from the logits, the logit update as one Adam step on the log-loss
change, a stalled task gaining weight, and the loss-weighting family's common contract."""
import pytest
import torch

from projects.allinone.engine.aggregators import FAMOAggregator

from weighting_props import (
    check_bad_hyperparameter_names_the_argument,
    check_build_from_registry,
    check_missing_task_row_leaves_its_state_alone,
    check_state_dict_round_trip_gives_identical_next_results,
    check_streaming_and_matrix_paths_agree,
    check_trains_through_the_optim_wrapper,
)

NAME = 'FAMOAggregator'


def test_famo_closed_form_gradient():
    agg = FAMOAggregator()
    agg.bind(['a', 'b'])
    agg.load_state_dict(dict(xi=dict(a=0.3, b=-0.2)))
    grads = torch.randn(2, 6, dtype=torch.float64)
    losses = torch.tensor([2.0, 0.5], dtype=torch.float64)
    r = agg.aggregate(grads, losses, None, ['a', 'b'])
    z = torch.softmax(torch.tensor([0.3, -0.2], dtype=torch.float64), 0)
    c = 1 / (z / losses).sum()
    w = c * z / losses
    torch.testing.assert_close(r.weights, w)
    torch.testing.assert_close(r.grad, w[0] * grads[0] + w[1] * grads[1])
    torch.testing.assert_close(r.own_scales, w)
    assert float(r.weights.sum()) == pytest.approx(1.0)  # c makes the weights sum to 1


def test_famo_logit_update_is_one_adam_step_on_the_log_loss_change():
    agg = FAMOAggregator(lr=0.025, gamma=1e-3)
    agg.bind(['a', 'b'])
    grads = torch.randn(2, 3, dtype=torch.float64)
    agg.aggregate(grads, torch.tensor([1.0, 1.0], dtype=torch.float64), None, ['a', 'b'])
    assert agg.state_dict()['xi'] == {}  # nothing to compare with yet
    agg.aggregate(grads, torch.tensor([0.5, 1.0], dtype=torch.float64), None, ['a', 'b'])
    xi = agg.state_dict()['xi']
    # delta = (log 2, 0), z = (1/2, 1/2): d xi = z (delta - z.delta) = (+, -); Adam's first step is lr * sign
    assert xi['a'] == pytest.approx(-0.025) and xi['b'] == pytest.approx(0.025)


def test_famo_task_whose_loss_stalls_gains_weight():
    agg = FAMOAggregator()
    agg.bind(['falling', 'stalled'])
    grads = torch.randn(2, 3, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for k in range(60):
        noise = 1 + 0.02 * torch.rand(2, generator=g, dtype=torch.float64)
        agg.aggregate(grads, torch.tensor([0.9 ** k, 1.0], dtype=torch.float64) * noise, None,
                      ['falling', 'stalled'])
    xi = agg.state_dict()['xi']
    assert xi['stalled'] > xi['falling']
    w = agg.next_weights(dict(falling=1.0, stalled=1.0))  # at equal losses the stalled task leads
    assert w['stalled'] > 0.6


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
    pytest.param(NAME, dict(lr=-0.1), 'lr', id='FAMOAggregator-kwargs12-lr'),
    pytest.param(NAME, dict(gamma=-1), 'gamma', id='FAMOAggregator-kwargs13-gamma'),
])
def test_bad_hyperparameters_name_the_argument(name, kwargs, arg):
    check_bad_hyperparameter_names_the_argument(name, kwargs, arg)


@pytest.mark.parametrize('name', [NAME])
def test_each_method_trains_through_the_optim_wrapper(name):
    check_trains_through_the_optim_wrapper(name)
