"""What every registered aggregator owes the run, whatever it computes (parametrised over the registry,
so a method added later is covered without editing this file):

* its arguments are validated by name: each bad value is an error naming ``Class.argument``;
* its whole state survives a checkpoint: after save and load through the optim wrapper the state has
  the same *values*, and the next steps are bit-identical to the uninterrupted run's;
* its randomness is its own: the results do not depend on torch's / numpy's / python's global RNG
  (which differs between data-parallel ranks under ``randomness.diff_rank_seed``);
* solver fallbacks of every step of a chain reach ``aggregator.fallbacks``; the non-finite skip
  counters are checkpointed.
"""
import copy
import inspect
import io
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from projects.allinone.engine.aggregators import ChainAggregator
from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper
from projects.allinone.registry import AGGREGATORS

TASKS = ['a', 'b', 'c']
NAN, INF = float('nan'), float('inf')

#: constructor arguments of the methods that have required ones
REQUIRED = {
    'ChainAggregator': dict(steps=[dict(type='TBGCAggregator', max_norm=0.1), dict(type='PCGradAggregator')]),
}
#: settings that make a method's state move within a few steps (the defaults wait 50-100 steps)
MOVING = {
    'MaxGNRAggregator': dict(warmup=2, update_interval=1, sketch_dim=64),
    'DWAAggregator': dict(window=2),
    'UncertaintyAggregator': dict(lr=0.05),
    'GradNormAggregator': dict(lr=0.05),
    'NashMTLAggregator': dict(update_weights_every=2),
    'ChainAggregator': dict(steps=[dict(type='RLWAggregator', total=3.0), dict(type='GradVacAggregator', beta=0.5)]),
}

#: bad values for every constructor argument of every registered aggregator (``tasks``: COMMON)
BAD = {
    'SumAggregator': {},
    'TBGCAggregator': dict(max_norm=[0, -0.1, NAN, INF, True, '0.1', None], norm_on=['backbone', None, 1],
                           rescale=[True, 0, -1.0, NAN, 'median'], own_max_norm=[0, -1.0, NAN, INF, True, 'x']),
    'MaxGNRAggregator': dict(beta=[1, -0.1, NAN, True], mean_beta=[1.0, -1, True], warmup=[1, 2.5, True],
                             update_interval=[0, 1.5, True], sketch_dim=[0, 3.0, True], seed=[-1, 1.5, None, True],
                             min_ratio=[0, 1, True], max_iter=[0, 2.0, True]),
    'EqualAggregator': dict(weights=[{'a': -1}, {'a': NAN}, {'a': True}, [1, 2], {1: 1.0}],
                            default=[-1, NAN, True, None]),
    'UncertaintyAggregator': dict(kind=['gauss', {'a': 'gauss'}, 1], init=[NAN, INF, True, None],
                                  lr=[0, -1, NAN, True], optimizer=['rmsprop', None]),
    'DWAAggregator': dict(window=[0, 1.5, True], temperature=[0, -1, NAN, INF, True]),
    'GradNormAggregator': dict(alpha=[-1, NAN, True], lr=[0, True], optimizer=['x'], min_weight=[0, 1, True],
                                 reference_steps=[0, 2.5, True, None]),
    'RLWAggregator': dict(total=[0, -1, NAN, True], seed=[None, -1, 1.5, True]),
    'FAMOAggregator': dict(lr=[0, True], gamma=[-1, NAN, True], eps=[0, True]),
    'PCGradAggregator': dict(reduction=['avg', None], seed=[None, -1, True]),
    'CAGradAggregator': dict(c=[-0.1, NAN, INF, True], rescale=[3, True, 1.0], reduction=['avg']),
    'MGDAAggregator': dict(normalization=['L2', None]),
    'IMTLGAggregator': {},
    'GradVacAggregator': dict(beta=[0, 1.5, NAN, True], seed=[None, True]),
    'AlignedMTLAggregator': dict(scale_mode=['max'], task_weights=[{'a': -1}, [1, 2], {'a': True}],
                                 scale_heads=[1, 'yes']),
    'NashMTLAggregator': dict(update_weights_every=[0, 1.5, True], max_norm=[-1, NAN, INF, True], tol=[0, True],
                              max_iter=[0, True]),
    'ChainAggregator': dict(steps=[[], [dict(type='TBGCAggregator')], 'tbgc', [1, 2],
                                   [dict(type='PCGradAggregator'), dict(type='TBGCAggregator')]]),
    'UPGradAggregator': dict(pref=[[1, 2], {'a': -1}, {'a': NAN}, {'a': True}], reg_eps=[-1, NAN, INF, True]),
    'DualProjAggregator': dict(pref=['a', {'a': -0.5}, {'a': INF}], reg_eps=[-1e-9, NAN, True, None]),
    'ConFIGAggregator': dict(pref=[(1, 2), {'a': NAN}], rcond=[-0.1, 1, NAN, True]),
    'FairGradAggregator': dict(alpha=[0, -1, NAN, INF, True], max_norm=[-1, NAN, INF, True], tol=[0, 1, True],
                               max_iter=[0, 1.5, True]),
    'CRMOGMAggregator': dict(method=['mgda', dict(type='NoSuchAggregator'), dict(type='GradDropAggregator')],
                             alpha=[-0.1, 1.5, NAN, True]),
    'IMTLAggregator': dict(lr=[0, -1, NAN, True], optimizer=['rmsprop', None], init=[NAN, INF, True, None]),
    'IMTLLAggregator': dict(lr=[0, -1, NAN, True], optimizer=['rmsprop', None], init=[NAN, INF, True, None]),
    'DBMTLAggregator': dict(beta=[-0.1, 1, NAN, True], beta_sigma=[-1, NAN, INF, True], eps=[0, -1, NAN, True]),
    'MoCoAggregator': dict(beta=[0, 1.5, NAN, True], beta_sigma=[-1, NAN, True], gamma=[0, -1, INF, True],
                           gamma_sigma=[-1, NAN, True], rho=[-0.1, NAN, True], normalize=['l2', None],
                           lambda_update=['exp', None]),
    'ExcessMTLAggregator': dict(robust_step_size=[0, -1, NAN, INF, True], reference_steps=[0, 2.5, True, None]),
    'GradDropAggregator': dict(leak=[-0.1, 1.5, NAN, True, {'a': 2.0}], seed=[-1, 1.5, None, True, 2 ** 31]),
    'STCHAggregator': dict(mu=[0, -1, NAN, INF, True], warmup=[1.5, True, 10], nadir_steps=[0, 2.5, True],
                           eps=[0, NAN, True]),
    'GLSAggregator': dict(eps=[0, -1, NAN, INF, True]),
    'SDMGradAggregator': dict(lamda=[-0.1, NAN, INF, True], niter=[0, 2.5, True], lr=[0, -1, NAN, True],
                              momentum=[-0.1, 1, NAN, True], samples=[0, 1.5, True, None]),
    'MoDoAggregator': dict(gamma=[0, -1, NAN, INF, True], rho=[-0.1, NAN, True], samples=[0, -1, 2.0, True]),
}
COMMON = dict(tasks=['abc', ['a', 'a'], [1, 2]])
#: values that are only wrong for the model's tasks: an error at bind(TASKS)
BAD_AT_BIND = {
    'EqualAggregator': dict(weights={'nope': 2.0}),
    'UncertaintyAggregator': dict(kind={'nope': 'simple'}),
    'AlignedMTLAggregator': dict(task_weights={'nope': 2.0}),
}

ALL = sorted(AGGREGATORS.module_dict)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: a second OpenMP thread only waits for a core another job holds."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def config(name, moving=False):
    return dict(type=name, **dict(REQUIRED.get(name, {}), **(MOVING.get(name, {}) if moving else {})))


# ------------------------------------------------------------------------------ argument validation
def bad_cases():
    for name in ALL:
        table = dict(COMMON, **BAD.get(name, {}))
        for arg, values in table.items():
            for value in values:
                yield pytest.param(name, arg, value, id=f'{name}.{arg}={value!r}')


def test_every_argument_has_bad_values():
    """A method added later must list bad values for each of its arguments in BAD."""
    missing = []
    for name in ALL:
        params = [p for p in inspect.signature(AGGREGATORS.get(name).__init__).parameters if p != 'self']
        missing += [f'{name}.{p}' for p in params if p not in BAD.get(name, {}) and p not in COMMON]
    assert not missing, f'add bad values for {missing} to BAD in {__file__}'


@pytest.mark.parametrize('name,arg,value', list(bad_cases()))
def test_bad_argument_is_an_error_naming_it(name, arg, value):
    cfg = dict(config(name), **{arg: value})
    with pytest.raises((ValueError, TypeError), match=rf'{name}\.{arg}'):
        agg = AGGREGATORS.build(cfg)
        agg.bind(TASKS)


@pytest.mark.parametrize('name', sorted(BAD_AT_BIND))
def test_unknown_task_name_is_an_error_at_bind(name):
    agg = AGGREGATORS.build(dict(config(name), **BAD_AT_BIND[name]))
    arg = next(iter(BAD_AT_BIND[name]))
    with pytest.raises(ValueError, match=rf"{name}\.{arg} names tasks \['nope'\]"):
        agg.bind(TASKS)


def test_tbgc_values_the_review_found_accepted_are_refused():
    from projects.allinone.engine.aggregators import TBGCAggregator
    for value in (-0.1, 0):  # ascent on every head, frozen heads
        with pytest.raises(ValueError, match='TBGCAggregator.own_max_norm must be a finite number > 0'):
            TBGCAggregator(own_max_norm=value)
    with pytest.raises(ValueError, match='TBGCAggregator.rescale'):
        TBGCAggregator(rescale=True)  # was read as a common norm of 1.0
    assert TBGCAggregator(rescale=1).rescale == 1.0 and TBGCAggregator(own_max_norm=2).own_max_norm == 2.0


# ------------------------------------------------------------------------------ through the optim wrapper
class TinyMTL3(nn.Module):
    """A shared trunk and three heads, each task with its own inputs."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.shared = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8))
        self.heads = nn.ModuleDict({t: nn.Linear(8, 2) for t in TASKS})
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def partition(self):
        return dict(shared=list(self.shared.parameters()), **{t: list(self.heads[t].parameters()) for t in TASKS})

    def loss(self, task, x):
        return (self.heads[task](self.shared(x)) - 1.0).pow(2).mean() + 0.1


def stream(steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{t: torch.randn(5, 4, generator=g) * (1 + i) for i, t in enumerate(TASKS)} for _ in range(steps)]


def run(model, wrapper, batches):
    if not wrapper.is_bound:
        wrapper.bind(model.partition())
    logs = []
    for batch in batches:
        for task, x in batch.items():
            wrapper.backward_task(task, model.loss(task, x))
        wrapper.update_tasks()
        logs.append(dict(wrapper.last_stats))
    return logs


def make(name, model, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return MultiTaskOptimWrapper(opt, aggregator=config(name, moving=True), stats_interval=3, **kw)


def through_checkpoint(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # checkpoints load with safe loading


def assert_same(a, b, path='state'):
    """Equal values, recursively: tensors bit for bit, floats exactly (NaN equals NaN)."""
    assert type(a) is type(b), f'{path}: {type(a).__name__} vs {type(b).__name__}'
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f'{path}: keys {sorted(a)} vs {sorted(b)}'
        for k in a:
            assert_same(a[k], b[k], f'{path}[{k!r}]')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f'{path}: length {len(a)} vs {len(b)}'
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f'{path}[{i}]')
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), f'{path}: tensors differ'
    elif isinstance(a, float):
        assert a == b or (math.isnan(a) and math.isnan(b)), f'{path}: {a} vs {b}'
    else:
        assert a == b, f'{path}: {a!r} vs {b!r}'


@pytest.mark.parametrize('name', ALL)
def test_state_round_trip_through_the_optim_wrapper_continues_bit_identically(name):
    batches = stream(7)
    model = TinyMTL3()
    wrapper = make(name, model)
    run(model, wrapper, batches[:4])
    state = through_checkpoint(wrapper.state_dict())
    resumed_model = copy.deepcopy(model)
    resumed = make(name, resumed_model)
    resumed.bind(resumed_model.partition())
    resumed.load_state_dict(state)
    assert_same(resumed.state_dict(), wrapper.state_dict())   # the values, not only the keys
    resumed.initialize_count_status(resumed_model, 4, 7)  # as the Runner does on resume
    want = run(model, wrapper, batches[4:])
    got = run(resumed_model, resumed, batches[4:])
    for step, (g, w) in enumerate(zip(got, want)):
        assert_same(g, w, f'logged scalars of resumed step {step}')
    for (k, p), q in zip(model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(p, q), k


@pytest.mark.parametrize('name', ALL)
def test_results_do_not_depend_on_the_global_random_state(name):
    """Ranks differ in their global RNG (diff_rank_seed): a method must not read it."""
    outs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        model = TinyMTL3()
        wrapper = make(name, model, streaming=False)  # the matrix path: T gradients at once
        run(model, wrapper, stream(4))
        outs.append([p.detach().clone() for p in model.parameters()])
    for p, q in zip(*outs):
        assert torch.equal(p, q)


@pytest.mark.parametrize('name', ALL)
def test_aggregate_does_not_read_the_global_random_state(name):
    """On gradients where the order of the projections matters (PCGrad, GradVac) and for random
    weightings (RLW): the same weights whatever the global RNGs hold."""
    grads = torch.tensor([[1.0, 0, 0], [-1, 1, 0], [-1, -1, 1]], dtype=torch.float64)
    losses, heads = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    outs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        agg = AGGREGATORS.build(config(name, moving=True))
        agg.bind(TASKS)
        outs.append([agg.aggregate(grads * (1 + k), losses, heads, TASKS).weights for k in range(4)])
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_seeded_randomness_differs_with_the_seed_and_is_saved():
    """PCGrad's order with 3 tasks: a different seed draws differently; the generator is in the state."""
    from projects.allinone.engine.aggregators import PCGradAggregator
    grads = torch.tensor([[1., 0, 0], [-1, 1, 0], [-1, -1, 1]])  # the order matters for T = 3
    seen = set()
    for seed in range(8):
        agg = PCGradAggregator(seed=seed)
        seen.add(tuple(torch.cat([agg.aggregate(grads, torch.ones(3)).grad for _ in range(3)]).tolist()))
    assert len(seen) > 1
    agg = PCGradAggregator(seed=3)
    agg.aggregate(grads, torch.ones(3))
    other = PCGradAggregator(seed=3)
    other.load_state_dict(through_checkpoint(agg.state_dict()))
    for _ in range(4):
        assert torch.equal(other.aggregate(grads, torch.ones(3)).grad, agg.aggregate(grads, torch.ones(3)).grad)


# ------------------------------------------------------------------------------ fallbacks and skips
def test_solver_fallbacks_of_every_chain_step_are_summed_and_logged():
    chain = ChainAggregator(steps=[dict(type='TBGCAggregator', max_norm=1.0), dict(type='NashMTLAggregator')])
    assert chain.fallbacks == 0
    chain.bind(TASKS)
    opposite = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])  # zero in the hull: no Nash solution
    chain.aggregate(opposite, torch.ones(2), None, ['a', 'b'])
    assert chain.steps[1].fallbacks == 1 and chain.fallbacks == 1
    assert ChainAggregator(steps=[dict(type='TBGCAggregator'), dict(type='PCGradAggregator')]).fallbacks is None
    model = TinyMTL3()
    wrapper = MultiTaskOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01), aggregator=chain)
    logs = run(model, wrapper, stream(1))
    assert logs[0]['aggregator.fallbacks'] == 1.0
    state = through_checkpoint(wrapper.state_dict())
    fresh = MultiTaskOptimWrapper(torch.optim.SGD(TinyMTL3().parameters(), lr=0.01),
                                  aggregator=dict(type='ChainAggregator', steps=[
                                      dict(type='TBGCAggregator', max_norm=1.0), dict(type='NashMTLAggregator')]))
    fresh.load_state_dict(state)
    assert fresh.aggregator.fallbacks == 1


def test_nonfinite_skip_counters_are_checkpointed():
    model = TinyMTL3()
    wrapper = MultiTaskOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01),
                                    aggregator=dict(type='TBGCAggregator'))
    wrapper.bind(model.partition())
    for _ in range(2):
        for task, x in stream(1)[0].items():
            loss = model.loss(task, x)
            wrapper.backward_task(task, loss * float('nan') if task == 'b' else loss)
        wrapper.update_tasks()
    assert wrapper.skipped == {'b': 2} and wrapper.last_stats['b.nonfinite_skips'] == 2.0
    state = through_checkpoint(wrapper.state_dict())
    assert state['nonfinite_skips'] == {'b': 2}
    resumed = MultiTaskOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01),
                                    aggregator=dict(type='TBGCAggregator'))
    resumed.bind(model.partition())
    resumed.load_state_dict(state)
    assert resumed.skipped == {'b': 2}
    for task, x in stream(1)[0].items():
        loss = model.loss(task, x)
        resumed.backward_task(task, loss * float('inf') if task == 'b' else loss)
    resumed.update_tasks()
    assert resumed.last_stats['b.nonfinite_skips'] == 3.0  # counts on from the checkpoint
