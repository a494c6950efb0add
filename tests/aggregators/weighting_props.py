"""Shared helpers of the loss-weighting family's tests (Equal, UW, DWA, GradNorm, RLW, FAMO) and MaxGNR:
a configuration of each that makes its state move, a stream of falling losses, the streaming and matrix
paths of one step, and the checks of the common contract, run for all of them by
``test_weighting_family_contract.py``.

Imported as ``from weighting_props import ...`` (this folder is on ``sys.path``, see ``agg_props``).
"""
import math

import pytest
import torch

from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper
from projects.allinone.registry import AGGREGATORS

from agg_props import TASKS, roundtrip

#: a configuration of every method that makes its state move within a few steps
CONFIGS = {
    'EqualAggregator': dict(weights=dict(det=2.0, cls=0.5)),
    'UncertaintyAggregator': dict(lr=0.05, kind=dict(det='regression', cls='classification')),
    'DWAAggregator': dict(window=2),
    'GradNormAggregator': dict(lr=0.05),
    'RLWAggregator': dict(),
    'FAMOAggregator': dict(),
    'MaxGNRAggregator': dict(warmup=2, update_interval=2, sketch_dim=64),
}


def build(name, **extra):
    return AGGREGATORS.build(dict(type=name, **CONFIGS[name], **extra))


def loss_stream(steps=8, n=40, seed=0, tasks=TASKS):
    """(grads (T, n), losses (T,), tasks) per step: positive losses that fall at different rates (not
    ``agg_props.make_stream``: other scales and noise)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(len(tasks), n, generator=g, dtype=torch.float64)
    out = []
    for k in range(steps):
        grads = base * torch.tensor([[1.0], [10.0], [0.1]][:len(tasks)], dtype=torch.float64) \
            + torch.randn(len(tasks), n, generator=g, dtype=torch.float64)
        losses = torch.tensor([2.0 * 0.8 ** k, 1.0, 5.0 * 0.95 ** k][:len(tasks)], dtype=torch.float64)
        losses = losses * (1 + 0.05 * torch.rand(len(tasks), generator=g, dtype=torch.float64))
        out.append((grads, losses, list(tasks)))
    return out


def streaming_step(agg, grads, losses, tasks):
    """What the optim wrapper does in streaming mode: factors task by task, then combine_factors."""
    norms = torch.linalg.vector_norm(grads, dim=1)
    head = torch.zeros_like(norms)
    factors = torch.tensor([agg.task_factor(float(n), 0.0, float(l), t) for n, l, t in zip(norms, losses, tasks)],
                           dtype=torch.float64)
    weights, own_scales, scale = agg.combine_factors(norms, head, factors, losses, tasks)
    grad = scale * (factors @ grads)
    return grad, weights, own_scales


def matrix_step(agg, grads, losses, tasks):
    r = agg.aggregate(grads, losses, torch.zeros(len(tasks), dtype=grads.dtype), tasks)
    return r.grad, r.weights, r.own_scales


# ---------------------------------------------------------------------------- the common contract
def check_build_from_registry(name):
    agg = AGGREGATORS.build(dict(type=name))
    assert type(agg).__name__ == name
    agg.bind(TASKS)
    assert repr(agg).startswith(name)


def check_streaming_and_matrix_paths_agree(name, weights_move=True):
    """Both paths on the same stream (a skipped task too); ``weights_move``: the weights must change."""
    stream = loss_stream(steps=10)
    stream[5] = (stream[5][0][[0, 2]], stream[5][1][[0, 2]], ['det', 'cls'])  # a skipped task too
    outs = []
    for step_fn in (streaming_step, matrix_step):
        agg = build(name)  # RLW: the same seed, the same draws for both
        agg.bind(TASKS)
        outs.append([step_fn(agg, *step) for step in stream])
    s_out, m_out = outs
    seen = set()
    for (g1, w1, h1), (g2, w2, h2) in zip(s_out, m_out):
        torch.testing.assert_close(w1.double(), w2.double(), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(h1.double(), w1.double())  # loss weighting: heads scaled as the trunk
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-12)
        seen.add(tuple(w1.tolist()))
    if weights_move:
        assert len(seen) > 1, 'the weights never changed'


def check_state_dict_round_trip_gives_identical_next_results(name):
    stream = loss_stream(steps=12)
    a = build(name)
    a.bind(TASKS)
    for step in stream[:6]:
        matrix_step(a, *step)
    state = roundtrip(a.state_dict())
    b = build(name)
    b.bind(TASKS)
    b.load_state_dict(state)
    torch.manual_seed(11)
    out_a = [matrix_step(a, *step) for step in stream[6:]]
    torch.manual_seed(11)
    out_b = [matrix_step(b, *step) for step in stream[6:]]
    for (g1, w1, _), (g2, w2, _) in zip(out_a, out_b):
        assert torch.equal(w1, w2)
        assert torch.equal(g1, g2)


def _has_no_numpy(obj):
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _has_no_numpy(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_has_no_numpy(v) for v in obj)
    return isinstance(obj, (int, float, bool, str, torch.Tensor, type(None)))


def _seg_entries(state):
    """Every leaf of the state that belongs to task 'seg' (dicts keyed by task name)."""
    found = []
    if isinstance(state, dict):
        for k, v in state.items():
            if k == 'seg' and not isinstance(v, dict):
                found.append(v)
            else:
                found += _seg_entries(v)
    return found


def check_missing_task_row_leaves_its_state_alone(name, seg_state='kept'):
    """A step without 'seg'. ``seg_state``: 'kept' (it has per-task state of 'seg', left as it was),
    'none' (whatever it has of 'seg' is left as it was, possibly nothing) or 'redrawn' (its only state
    is redrawn for every bound task each step: not compared)."""
    agg = build(name)
    agg.bind(TASKS)
    stream = loss_stream(steps=6)
    for step in stream[:4]:
        matrix_step(agg, *step)
    before = agg.state_dict()
    assert _has_no_numpy(before)
    grads, losses, _ = stream[4]
    g, w, h = matrix_step(agg, grads[[0, 2]], losses[[0, 2]], ['det', 'cls'])
    assert g.shape == grads[0].shape and w.shape == (2,) and torch.isfinite(g).all()
    after = agg.state_dict()
    if seg_state == 'redrawn':
        return
    assert len(_seg_entries(before)) == len(_seg_entries(after))
    for x, y in zip(_seg_entries(before), _seg_entries(after)):
        assert (torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y)
    if seg_state == 'kept':
        assert _seg_entries(before), 'expected per-task state for seg'


def check_bad_hyperparameter_names_the_argument(name, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        AGGREGATORS.build(dict(type=name, **kwargs))


def check_trains_through_the_optim_wrapper(name, overrides=None, weights=None):
    """A few steps of ``tests/test_optim_wrapper.py``'s model through the real wrapper with
    ``CONFIGS[name]`` updated by ``overrides``: the logged weights are ``weights`` (a set of rows) at
    every step when given, else they change; the state's values survive a checkpoint."""
    from test_optim_wrapper import TinyMTL, batches, params_of, run_wrapper
    model = TinyMTL()
    before = params_of(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    cfg = dict(type=name, **CONFIGS[name])
    cfg.update(overrides or {})
    wrapper = MultiTaskOptimWrapper(opt, aggregator=cfg, stats_interval=3)
    logged = []
    for batch in batches(n=6):
        run_wrapper(model, wrapper, batch)
        logged.append((wrapper.last_stats['a.weight'], wrapper.last_stats['b.weight']))
    for p, p0 in zip(model.parameters(), before):
        assert torch.isfinite(p).all()
    assert any(not torch.equal(p, p0) for p, p0 in zip(model.parameters(), before))
    assert all(math.isfinite(w) for ws in logged for w in ws)
    if weights is not None:
        assert set(logged) == weights
    else:
        assert len(set(logged)) > 1
    # the state's values survive a checkpoint (bit-identical continuation: test_aggregators_contract.py)
    from test_aggregators_contract import assert_same
    state = roundtrip(wrapper.state_dict())  # checkpoints load with weights_only
    fresh = MultiTaskOptimWrapper(torch.optim.SGD(TinyMTL().parameters(), lr=0.05),
                                  aggregator=cfg)
    fresh.load_state_dict(state)
    assert_same(fresh.aggregator.state_dict(), wrapper.aggregator.state_dict())
