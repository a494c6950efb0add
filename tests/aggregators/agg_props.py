"""Shared helpers of the aggregator tests: gradient sets, checkpoint round trips, a tiny 3-task model
driven through the real ``MultiTaskOptimWrapper``, and the per-task reference step it must reproduce.

Imported by the tests of this folder as ``from agg_props import ...`` (pytest's default ``prepend``
import mode puts this folder on ``sys.path``).
"""
import copy
import io
import math
from typing import Dict, List, Sequence

import numpy as np
import pytest
import torch
from torch import nn

TASKS = ['det', 'seg', 'cls']


def G(*rows, dtype=torch.float64):
    """A gradient matrix from its rows."""
    return torch.tensor(rows, dtype=dtype)


def random_grads(T=3, n=8, seed=0, conflict=True, dtype=torch.float64, draw_dtype=torch.float64):
    """``(T, n)`` random gradients; with ``conflict`` the second row conflicts with the first. They are
    drawn in ``draw_dtype`` (float32 draws are other numbers than float64 ones) and returned in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(T, n, generator=g, dtype=draw_dtype)
    if conflict and T > 1:
        grads[1] -= 1.5 * grads[0]
    return grads.to(dtype)


def brute_projection(J, x):
    """The projection of ``x`` onto the dual cone ``{d : J d >= 0}`` by a generic solver in R^n."""
    from scipy.optimize import minimize
    res = minimize(lambda d: 0.5 * np.sum((d - x) ** 2), x, jac=lambda d: d - x, method='SLSQP',
                   constraints=[dict(type='ineq', fun=lambda d: J @ d, jac=lambda d: J)],
                   options=dict(ftol=1e-14, maxiter=500))
    return res.x


def run(agg, grads, tasks=None, losses=None, own_norms=None):
    """``agg.aggregate`` with unit losses by default."""
    losses = torch.ones(len(grads), dtype=grads.dtype) if losses is None else torch.as_tensor(losses, dtype=grads.dtype)
    return agg.aggregate(grads, losses, own_norms, tasks)


def close(actual, expected, atol=1e-9, rtol=1e-7):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(np.asarray(expected, dtype=np.float64)), atol=atol, rtol=rtol)


def roundtrip(state):
    """Through ``torch.save`` / ``torch.load(weights_only=True)``, as a checkpoint goes."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def assert_same_state(a, b, path='state', rtol=0.0):
    """Equal by value, leaf by leaf: bit for bit (``rtol=0``) or to a relative tolerance."""
    assert type(a) is type(b) or (isinstance(a, (int, float)) and isinstance(b, (int, float))), \
        f'{path}: {type(a).__name__} != {type(b).__name__}'
    if isinstance(a, dict):
        assert set(a) == set(b), f'{path}: keys {sorted(a)} != {sorted(b)}'
        for k in a:
            assert_same_state(a[k], b[k], f'{path}[{k!r}]', rtol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f'{path}[{i}]', rtol)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype, path
        if rtol:
            torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()), msg=path)
        else:
            assert torch.equal(a, b), path
    elif rtol and isinstance(a, float):
        assert a == pytest.approx(b, rel=rtol, abs=1e-12), f'{path}: {a!r} != {b!r}'
    else:
        assert a == b, f'{path}: {a!r} != {b!r}'


def make_stream(steps=6, T=3, n=12, seed=0, tasks=TASKS):
    """(grads, losses, tasks) per step: noisy gradients around fixed means, falling losses."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(T, n, generator=g, dtype=torch.float64)
    base[1] -= 1.2 * base[0]
    out = []
    for k in range(steps):
        grads = base * torch.tensor([[1.0], [3.0], [0.3]], dtype=torch.float64)[:T] \
            + 0.5 * torch.randn(T, n, generator=g, dtype=torch.float64)
        losses = torch.tensor([2.0 * 0.9 ** k, 1.0, 0.5 * 0.97 ** k], dtype=torch.float64)[:T]
        out.append((grads, losses, list(tasks[:T])))
    return out


def check_round_trip(build, stream, split=3, seed=5):
    """Run ``stream[:split]``, checkpoint the state, load it into a fresh instance: both must then give
    bit-identical results (and states) on ``stream[split:]``."""
    a = build()
    a.bind(TASKS)
    for grads, losses, tasks in stream[:split]:
        a.aggregate(grads, losses, None, tasks)
    state = roundtrip(a.state_dict())
    b = build()
    b.bind(TASKS)
    b.load_state_dict(state)
    assert_same_state(b.state_dict(), a.state_dict())
    for grads, losses, tasks in stream[split:]:
        torch.manual_seed(seed)
        ra = a.aggregate(grads, losses, None, tasks)
        torch.manual_seed(seed)
        rb = b.aggregate(grads, losses, None, tasks)
        assert torch.equal(ra.grad, rb.grad) and torch.equal(ra.weights, rb.weights)
        assert torch.equal(ra.own_scales, rb.own_scales)
    assert_same_state(b.state_dict(), a.state_dict())


def task_entries(state, task) -> List:
    """Every leaf of ``state`` stored under the key ``task`` (states keep per-task values by name)."""
    found = []
    if isinstance(state, dict):
        for k, v in state.items():
            if k == task and not isinstance(v, dict):
                found.append(v)
            else:
                found += task_entries(v, task)
    return found


def check_missing_task_untouched(build, stream, missing='seg'):
    """A step without ``missing`` (skipped for a non-finite gradient) leaves its state entries as they were."""
    agg = build()
    agg.bind(TASKS)
    for grads, losses, tasks in stream[:2]:
        agg.aggregate(grads, losses, None, tasks)
    before = copy.deepcopy(agg.state_dict())
    keep = [i for i, t in enumerate(TASKS) if t != missing]
    grads, losses, _ = stream[2]
    r = agg.aggregate(grads[keep], losses[keep], None, [TASKS[i] for i in keep])
    assert r.grad.shape == grads[0].shape and r.weights.shape == (len(keep),) and torch.isfinite(r.grad).all()
    entries_before, entries_after = task_entries(before, missing), task_entries(agg.state_dict(), missing)
    assert entries_before, f'no per-task state of {missing!r} to check'
    assert len(entries_before) == len(entries_after)
    for x, y in zip(entries_before, entries_after):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
    return before, agg.state_dict()


# ----------------------------------------------------------------------------- through the optim wrapper
class TinyMTL(nn.Module):
    """A shared trunk and three task heads; every task has its own inputs, as in AllInOne."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.shared = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6))
        self.heads = nn.ModuleDict({t: nn.Linear(6, k) for t, k in zip(TASKS, (1, 3, 2))})
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def partition(self) -> Dict[str, List[nn.Parameter]]:
        out = dict(shared=list(self.shared.parameters()))
        out.update({t: list(h.parameters()) for t, h in self.heads.items()})
        return out

    def loss(self, task, x):
        """Positive losses of different scales (what the loss-based methods need)."""
        out = self.heads[task](self.shared(x))
        return (out - 1.0).pow(2).mean() * {'det': 1.0, 'seg': 4.0, 'cls': 0.25}[task] + 0.01


def tiny_batches(steps=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{t: torch.randn(5, 4, generator=g) for t in TASKS} for _ in range(steps)]


def wrapper_step(model, wrapper, batch):
    if not wrapper.is_bound:
        wrapper.bind(model.partition())
    with wrapper.optim_context(model):
        for task, x in batch.items():
            wrapper.backward_task(task, model.loss(task, x))
    wrapper.update_tasks()


def reference_step(model, agg, batch, lr=1.0):
    """What one SGD step of the wrapper with ``agg`` must do, computed task by task by hand: each task's
    shared and own gradients by its own backward, ``agg.aggregate`` on the stacked shared gradients, the
    combined gradient on the trunk and each head's gradient times its head scale."""
    shared = list(model.shared.parameters())
    rows, heads, losses, own_norms = [], {}, [], []
    for task, x in batch.items():
        model.zero_grad(set_to_none=True)
        loss = model.loss(task, x)
        loss.backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in shared]))
        heads[task] = [p.grad.clone() for p in model.heads[task].parameters()]
        own_norms.append(math.sqrt(sum(float(g.pow(2).sum()) for g in heads[task])))
        losses.append(float(loss))
    model.zero_grad(set_to_none=True)
    grads = torch.stack(rows)
    r = agg.aggregate(grads, torch.tensor(losses, dtype=grads.dtype), torch.tensor(own_norms, dtype=grads.dtype),
                      list(batch))
    with torch.no_grad():
        offset = 0
        for p in shared:
            p -= lr * r.grad[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        for i, task in enumerate(batch):
            for p, g in zip(model.heads[task].parameters(), heads[task]):
                p -= lr * float(r.own_scales[i]) * g
    return r


def check_through_wrapper(cfg: dict, steps=4, streaming_modes: Sequence = (None,)):
    """The real wrapper (SGD, lr 1e-2) against :func:`reference_step` step by step, for each streaming mode;
    returns the logged weights of the last run. Parameters must move and match the reference."""
    from projects.allinone.engine.aggregators.base import build_aggregator
    from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper
    lr = 1e-2
    logged = None
    for streaming in streaming_modes:
        ref_model, model = TinyMTL(), TinyMTL()
        start = [p.detach().clone() for p in model.parameters()]
        ref_agg = build_aggregator(copy.deepcopy(cfg))
        ref_agg.bind(TASKS)
        wrapper = MultiTaskOptimWrapper(torch.optim.SGD(model.parameters(), lr=lr), aggregator=copy.deepcopy(cfg),
                                        streaming=streaming, stats_interval=2)
        logged = []
        for batch in tiny_batches(steps):
            torch.manual_seed(0)
            wrapper_step(model, wrapper, batch)
            torch.manual_seed(0)
            reference_step(ref_model, ref_agg, batch, lr)
            for p, q in zip(model.parameters(), ref_model.parameters()):
                torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
            logged.append([wrapper.last_stats[f'{t}.weight'] for t in TASKS])
        assert all(math.isfinite(w) for row in logged for w in row)
        assert any(not torch.equal(p, p0) for p, p0 in zip(model.parameters(), start))
        assert_same_state(roundtrip(wrapper.state_dict()).get('aggregator', {}), ref_agg.state_dict(), rtol=1e-4)
    return logged


def check_scalariser(cfg: dict, scalarised, steps=4, streaming_modes=(True, False)):
    """A loss scalariser through the real wrapper equals autograd of its scalarised loss: for each step
    ``scalarised(losses, step)`` (``losses``: the tasks' loss tensors of one joint graph) is
    back-propagated on a twin model and SGD-stepped; parameters must match after every step, on the
    streaming path (one buffer) and on the matrix path alike."""
    from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper
    lr = 1e-2
    finals = []
    for streaming in streaming_modes:
        ref_model, model = TinyMTL(), TinyMTL()
        ref_opt = torch.optim.SGD(ref_model.parameters(), lr=lr)
        wrapper = MultiTaskOptimWrapper(torch.optim.SGD(model.parameters(), lr=lr), aggregator=copy.deepcopy(cfg),
                                        streaming=streaming, stats_interval=0)
        for k, batch in enumerate(tiny_batches(steps)):
            wrapper_step(model, wrapper, batch)
            ref_opt.zero_grad()
            scalarised({t: ref_model.loss(t, x) for t, x in batch.items()}, k).backward()
            ref_opt.step()
            for p, q in zip(model.parameters(), ref_model.parameters()):
                torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
        finals.append([p.detach().clone() for p in model.parameters()])
    for other in finals[1:]:
        for p, q in zip(finals[0], other):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8)
