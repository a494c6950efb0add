"""The common contract of the loss-weighting family (Equal, UW, DWA, GradNorm, RLW, FAMO) and MaxGNR,
checked once for all of them: built from the registry, streaming and matrix paths agree (MaxGNR has no
streaming path), the state round-trips to identical next results, a step without a task leaves its state
alone, bad hyperparameters are named, and a run through the optim wrapper. Each method's own properties
are in ``test_<method>.py``; the checks themselves are in ``weighting_props``."""
import pytest

from weighting_props import (
    CONFIGS,
    check_bad_hyperparameter_names_the_argument,
    check_build_from_registry,
    check_missing_task_row_leaves_its_state_alone,
    check_state_dict_round_trip_gives_identical_next_results,
    check_streaming_and_matrix_paths_agree,
    check_trains_through_the_optim_wrapper,
)

FAMILY = list(CONFIGS)
STREAMING = [n for n in FAMILY if n != 'MaxGNRAggregator']

#: what a step without 'seg' leaves of seg's state (see check_missing_task_row_leaves_its_state_alone)
SEG_STATE = dict(EqualAggregator='none', RLWAggregator='redrawn')

#: hyperparameters each method refuses, and the argument the error must name; ids: those of the
#: family's former common table
BAD = [
    ('EqualAggregator', dict(weights=dict(det=-1.0)), 'weights', 'kwargs0'),
    ('EqualAggregator', dict(weights=[1, 2]), 'weights', 'kwargs1'),
    ('UncertaintyAggregator', dict(kind='poisson'), 'kind', 'kwargs2'),
    ('UncertaintyAggregator', dict(lr=0), 'lr', 'kwargs3'),
    ('UncertaintyAggregator', dict(optimizer='rmsprop'), 'optimizer', 'kwargs4'),
    ('DWAAggregator', dict(window=0), 'window', 'kwargs5'),
    ('DWAAggregator', dict(temperature=-2), 'temperature', 'kwargs6'),
    ('GradNormAggregator', dict(alpha=-1), 'alpha', 'kwargs7'),
    ('GradNormAggregator', dict(lr=float('nan')), 'lr', 'kwargs8'),
    ('GradNormAggregator', dict(min_weight=0), 'min_weight', 'kwargs9'),
    ('RLWAggregator', dict(total=0), 'total', 'kwargs10'),
    ('RLWAggregator', dict(seed=1.5), 'seed', 'kwargs11'),
    ('FAMOAggregator', dict(lr=-0.1), 'lr', 'kwargs12'),
    ('FAMOAggregator', dict(gamma=-1), 'gamma', 'kwargs13'),
    ('MaxGNRAggregator', dict(beta=1.0), 'beta', 'kwargs14'),
    ('MaxGNRAggregator', dict(mean_beta=-0.1), 'mean_beta', 'kwargs15'),
    ('MaxGNRAggregator', dict(warmup=1), 'warmup', 'kwargs16'),
    ('MaxGNRAggregator', dict(update_interval=0), 'update_interval', 'kwargs17'),
    ('MaxGNRAggregator', dict(sketch_dim=0), 'sketch_dim', 'kwargs18'),
    ('MaxGNRAggregator', dict(min_ratio=2), 'min_ratio', 'kwargs19'),
]

#: what the optim-wrapper run needs beyond CONFIGS, and the weights it must see (None: any that move)
THROUGH_WRAPPER = dict(
    EqualAggregator=dict(overrides=dict(weights=dict(a=3.0)), weights={(3.0, 1.0)}),
    # the kinds by this model's task names (unknown names are an error)
    UncertaintyAggregator=dict(overrides=dict(kind=dict(a='regression', b='classification'))),
)


@pytest.mark.parametrize('name', FAMILY)
def test_build_from_registry(name):
    check_build_from_registry(name)


@pytest.mark.parametrize('name', STREAMING)
def test_streaming_and_matrix_paths_agree(name):
    check_streaming_and_matrix_paths_agree(name, weights_move=name != 'EqualAggregator')


@pytest.mark.parametrize('name', FAMILY)
def test_state_dict_round_trip_gives_identical_next_results(name):
    check_state_dict_round_trip_gives_identical_next_results(name)


@pytest.mark.parametrize('name', FAMILY)
def test_missing_task_row_leaves_its_state_alone(name):
    check_missing_task_row_leaves_its_state_alone(name, seg_state=SEG_STATE.get(name, 'kept'))


@pytest.mark.parametrize('name,kwargs,arg', [pytest.param(n, k, a, id=f'{n}-{i}-{a}') for n, k, a, i in BAD])
def test_bad_hyperparameters_name_the_argument(name, kwargs, arg):
    check_bad_hyperparameter_names_the_argument(name, kwargs, arg)


def test_every_method_refuses_some_hyperparameter():
    assert {name for name, *_ in BAD} == set(FAMILY)


@pytest.mark.parametrize('name', FAMILY)
def test_each_method_trains_through_the_optim_wrapper(name):
    check_trains_through_the_optim_wrapper(name, **THROUGH_WRAPPER.get(name, {}))
