"""Shared helpers of the gradient-aggregation family's tests (PCGrad, CAGrad, MGDA, IMTL-G, GradVac,
Aligned-MTL, Nash-MTL): float32 gradient sets with float32 tolerances, and the checks of
the common contract, run for all of them by ``test_gradient_family_contract.py``.

Imported as ``from gradient_props import ...`` (this folder is on ``sys.path``, see ``agg_props``).
"""
import copy
import functools

import pytest
import torch
from torch import nn

from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper
from projects.allinone.registry import AGGREGATORS

from agg_props import G as _G
from agg_props import close as _close
from agg_props import random_grads as _random_grads
from agg_props import roundtrip, run

__all__ = ['G', 'close', 'random_grads', 'run', 'build', 'check_weights_reproduce_grad', 'check_state_dict_round_trip',
           'check_missing_task_row', 'check_zero_gradient_row', 'check_single_task', 'check_bad_hyperparameters',
           'check_through_optim_wrapper']

#: a gradient matrix from its rows, in float32
G = functools.partial(_G, dtype=torch.float32)
#: ``agg_props.close`` at the float32 tolerances of this family
close = functools.partial(_close, atol=1e-5, rtol=1e-5)
#: ``(T, n)`` float32 random gradients (drawn in float32), the second row conflicting with the first;
#: ``run`` (from ``agg_props``) then gives float32 unit losses
random_grads = functools.partial(_random_grads, dtype=torch.float32, draw_dtype=torch.float32)


def build(name, **kw):
    return AGGREGATORS.build(dict(type=name, **kw))


# ----------------------------------------------------------------------------- the common contract
def check_weights_reproduce_grad(name):
    grads = random_grads(3, 50, 4)
    torch.manual_seed(0)
    r = build(name).aggregate(grads, torch.tensor([1.0, 2.0, 0.5]), torch.ones(3), None)
    assert r.grad.shape == (50,) and r.weights.shape == (3,) and r.own_scales.shape == (3,)
    assert r.grad.dtype == grads.dtype
    torch.testing.assert_close(r.grad, r.weights.to(grads) @ grads, rtol=0, atol=0)
    assert torch.isfinite(r.own_scales).all()


def check_state_dict_round_trip(name):
    from test_aggregators_contract import assert_same
    steps = [random_grads(3, 10, s) for s in range(4)]
    agg = build(name)
    agg.bind(['a', 'b', 'c'])
    for grads in steps[:2]:
        agg.aggregate(grads, torch.ones(3), None, None)
    state = roundtrip(agg.state_dict())   # checkpoints load with safe loading
    other = build(name)
    other.bind(['a', 'b', 'c'])
    other.load_state_dict(copy.deepcopy(state))
    assert_same(other.state_dict(), agg.state_dict())
    for grads in steps[2:]:
        expected = agg.aggregate(grads, torch.ones(3), None, None)
        got = other.aggregate(grads, torch.ones(3), None, None)
        torch.testing.assert_close(got.grad, expected.grad, rtol=0, atol=0)
        torch.testing.assert_close(got.own_scales, expected.own_scales, rtol=0, atol=0)


def check_missing_task_row(name):
    """A step without task ``b``; returns the aggregator and its state before that step."""
    agg = build(name)
    agg.bind(['a', 'b', 'c'])
    agg.aggregate(random_grads(3, 8, 0), torch.ones(3), None, None)
    before = copy.deepcopy(agg.state_dict())
    r = agg.aggregate(random_grads(2, 8, 1), torch.ones(2), None, ['a', 'c'])
    assert r.grad.shape == (8,) and r.weights.shape == (2,) and torch.isfinite(r.grad).all()
    return agg, before


def check_zero_gradient_row(name, zero_rows):
    grads = random_grads(3, 8, 2)
    grads[zero_rows] = 0
    torch.manual_seed(0)
    r = build(name).aggregate(grads, torch.ones(3), None, None)
    for t in (r.grad, r.weights, r.own_scales):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(r.grad, r.weights @ grads, rtol=0, atol=0)
    if len(zero_rows) == 3:
        assert float(r.grad.abs().max()) == 0


def check_single_task(name):
    grads = G([3, 4])
    r = build(name).aggregate(grads, torch.ones(1), None, None)
    assert torch.isfinite(r.grad).all() and float(r.grad @ grads[0]) > 0


def check_bad_hyperparameters(cfg):
    arg = [k for k in cfg if k != 'type'][0]
    with pytest.raises(ValueError, match=arg):
        AGGREGATORS.build(cfg)


# ----------------------------------------------------------------------------- through the optim wrapper
class ThreeTaskMTL(nn.Module):
    """A shared trunk and three heads; each task has its own inputs, as in AllInOne."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8))
        self.heads = nn.ModuleDict(dict(a=nn.Linear(8, 1), b=nn.Linear(8, 3), c=nn.Linear(8, 2)))

    def partition(self):
        return dict(shared=list(self.shared.parameters()),
                    **{t: list(h.parameters()) for t, h in self.heads.items()})

    def loss(self, task, x):
        out = self.heads[task](self.shared(x))
        target = torch.ones_like(out) if task == 'b' else -torch.ones_like(out)
        return ((out - target) ** 2).mean()


def check_through_optim_wrapper(name):
    """One SGD step of the real wrapper against per-task gradients aggregated by hand."""
    model = ThreeTaskMTL()
    gen = torch.Generator().manual_seed(5)
    batch = {t: torch.randn(6, 4, generator=gen) * s for t, s in zip('abc', (1.0, 3.0, 0.5))}
    # reference: per-task gradients by hand, aggregated by a fresh instance of the same method
    shared = list(model.shared.parameters())
    rows, heads = [], {}
    for t, x in batch.items():
        model.zero_grad(set_to_none=True)
        model.loss(t, x).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in shared]))
        heads[t] = [p.grad.clone() for p in model.heads[t].parameters()]
    model.zero_grad(set_to_none=True)
    torch.manual_seed(11)
    ref = build(name).aggregate(torch.stack(rows), torch.ones(3), None, list(batch))

    before = [p.detach().clone() for p in model.parameters()]
    lr = 0.1
    wrapper = MultiTaskOptimWrapper(torch.optim.SGD(model.parameters(), lr=lr), aggregator=dict(type=name))
    wrapper.bind(model.partition())
    torch.manual_seed(11)
    with wrapper.optim_context(model):
        for t, x in batch.items():
            wrapper.backward_task(t, model.loss(t, x))
    wrapper.update_tasks()

    after = [p.detach() for p in model.parameters()]
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    step = torch.cat([(b - a).reshape(-1) for a, b, p in zip(after, before, model.parameters())
                      if any(p is q for q in shared)])
    torch.testing.assert_close(step, lr * ref.grad, rtol=1e-4, atol=1e-6)
    for i, t in enumerate(batch):
        for p, p0, g in zip(model.heads[t].parameters(), [b for b, q in zip(before, model.parameters())
                                                          if any(q is h for h in model.heads[t].parameters())],
                            heads[t]):
            torch.testing.assert_close(p0 - p.detach(), lr * float(ref.own_scales[i]) * g, rtol=1e-4, atol=1e-6)
    for i, t in enumerate(batch):
        assert wrapper.last_stats[f'{t}.weight'] == pytest.approx(float(ref.weights[i]), rel=1e-4, abs=1e-6)
