"""The gradient-aggregation family (PCGrad, CAGrad, MGDA, IMTL-G, GradVac, Aligned-MTL, Nash-MTL).

Known answers on hand-made gradient sets, the property each paper claims (checked against brute force
or an independent computation), and the common contract of every method.
"""
import copy
import io
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from projects.allinone.engine.aggregators import (AlignedMTLAggregator, CAGradAggregator, GradVacAggregator,
                                                  IMTLGAggregator, MGDAAggregator, NashMTLAggregator,
                                                  PCGradAggregator)
from projects.allinone.engine.aggregators import nashmtl as nashmtl_module
from projects.allinone.engine.aggregators._gram import gram_matrix, min_norm_weights
from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper
from projects.allinone.registry import AGGREGATORS

METHODS = ['PCGradAggregator', 'CAGradAggregator', 'MGDAAggregator', 'IMTLGAggregator', 'GradVacAggregator',
           'AlignedMTLAggregator', 'NashMTLAggregator']


def G(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def run(agg, grads, tasks=None, losses=None):
    losses = torch.ones(len(grads)) if losses is None else torch.as_tensor(losses, dtype=torch.float32)
    return agg.aggregate(grads, losses, None, tasks)


def close(actual, expected, atol=1e-5, rtol=1e-5):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=rtol)


def random_grads(T=3, n=6, seed=0, conflict=True):
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(T, n, generator=g)
    if conflict:  # make the first two conflict
        grads[1] -= 1.5 * grads[0]
    return grads


# ----------------------------------------------------------------------------- PCGrad
def pcgrad_reference(grads, orders):
    """Algorithm 1 of the paper with explicit vectors; orders[i] = order of the other tasks for task i."""
    g = grads.double().numpy()
    out = []
    for i, order in enumerate(orders):
        v = g[i].copy()
        for j in order:
            dot = v @ g[j]
            if dot < 0:
                v = v - dot / (g[j] @ g[j]) * g[j]
        out.append(v)
    return np.sum(out, 0)


def test_pcgrad_known_answers():
    agg = PCGradAggregator()
    r = run(agg, G([1, 0], [0, 1]))                      # orthogonal: no conflict, the sum
    close(r.grad, [1, 1]), close(r.weights, [1, 1])
    r = run(agg, G([1, 0], [-1, 1]))                     # conflict: g1 + g2/2 and g2 + g1
    close(r.grad, [0.5, 1.5]), close(r.weights, [2, 1.5])
    r = run(agg, G([1, 2], [-1, -2]))                    # opposite: both projected to zero
    close(r.grad, [0, 0])
    r = run(agg, G([100, 0], [-1, 1]))                   # dominating and conflicting
    close(r.grad, [50, 51]), close(r.weights, [1.01, 51])  # (100,0) + 50 g2 and g2 + g1 / 100
    close(r.head_scales, [1, 1])
    close(run(PCGradAggregator(reduction='mean'), G([1, 0], [-1, 1])).grad, [0.25, 0.75])


def test_pcgrad_removes_conflicting_components():
    torch.manual_seed(0)
    grads = random_grads(2, 8)
    K = gram_matrix(grads)
    assert K[0, 1] < 0
    C = PCGradAggregator().coefficients(K)
    projected = torch.tensor(C) @ grads.double()
    # each projected gradient lies on the normal plane of the other task's gradient (to the float32
    # precision of the gradients, in which the Gram matrix is formed)
    assert abs(float(projected[0] @ grads[1].double())) < 1e-5
    assert abs(float(projected[1] @ grads[0].double())) < 1e-5
    close(run(PCGradAggregator(), grads).grad, pcgrad_reference(grads, [[1], [0]]))


def test_pcgrad_no_conflict_is_the_sum():
    grads = G([1, 0, 0], [1, 1, 0], [0, 1, 1])
    r = run(PCGradAggregator(), grads)
    close(r.grad, grads.sum(0)), close(r.weights, [1, 1, 1])


def test_pcgrad_random_order_from_its_own_generator():
    grads = G([1, 0, 0], [-1, 1, 0], [-1, -1, 1])        # order matters for T=3
    possible = [pcgrad_reference(grads, orders) for orders in itertools.product(
        *[list(itertools.permutations([j for j in range(3) if j != i])) for i in range(3)])]
    seen = set()
    for seed in range(12):
        r = run(PCGradAggregator(seed=seed), grads)
        assert any(np.allclose(r.grad.numpy(), p, atol=1e-5) for p in possible)
        seen.add(tuple(np.round(r.grad.numpy(), 4)))
        torch.manual_seed(seed + 100)                                      # the global RNG plays no part
        close(run(PCGradAggregator(seed=seed), grads).grad, r.grad, atol=0, rtol=0)   # reproducible
    assert len(seen) > 1                                                   # and really random


# ----------------------------------------------------------------------------- MGDA
def brute_force_min_norm(grads, steps=200):
    g = grads.double().numpy()
    best = math.inf
    for i in range(steps + 1):
        for j in range(steps + 1 - i):
            w = np.array([i, j, steps - i - j]) / steps
            best = min(best, float(np.sum((w @ g) ** 2)))
    return best


def test_mgda_known_answers():
    agg = MGDAAggregator()
    r = run(agg, G([1, 0], [0, 1]))
    close(r.weights, [0.5, 0.5]), close(r.grad, [0.5, 0.5]), close(r.head_scales, [0.5, 0.5])
    r = run(agg, G([1, 2], [-1, -2]))                    # Pareto stationary: d = 0
    close(r.grad, [0, 0]), close(r.weights, [0.5, 0.5])
    r = run(agg, G([100, 0], [0, 1]))                    # the small gradient dominates the min-norm point
    close(r.weights, [1 / 10001, 10000 / 10001])
    close(r.grad, [100 / 10001, 10000 / 10001])
    r = run(agg, G([1, 0, 0], [0, 1, 0], [0, 0, 1]))
    close(r.weights, [1 / 3] * 3), close(r.grad, [1 / 3] * 3)
    r = run(agg, G([1, 0, 0], [0, 1, 0], [2, 2, 1]))     # third gradient not on the min-norm face
    close(r.grad, [0.5, 0.5, 0]), close(r.weights, [0.5, 0.5, 0])


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_mgda_is_the_min_norm_point(seed):
    grads = random_grads(3, 5, seed)
    r = run(MGDAAggregator(), grads)
    d = r.grad.double()
    norm2 = float(d @ d)
    assert norm2 <= brute_force_min_norm(grads) + 1e-7
    for g in grads.double():                       # optimality: d . g_t >= |d|^2 for every task
        assert float(d @ g) >= norm2 - 1e-6
    assert r.weights.min() >= 0 and float(r.weights.sum()) == pytest.approx(1, abs=1e-6)


def test_mgda_many_tasks_solver_matches_exact():
    torch.manual_seed(3)
    grads = torch.randn(12, 20)
    grads[:4] -= grads[4:8]
    K = gram_matrix(grads)
    exact = min_norm_weights(K, exact_max_tasks=12)
    approx = min_norm_weights(K)                   # SLSQP above 10 tasks
    assert approx @ K @ approx == pytest.approx(exact @ K @ exact, rel=1e-6, abs=1e-9)
    d = torch.tensor(approx) @ grads.double()
    assert all(float(d @ g) >= float(d @ d) - 1e-6 for g in grads.double())


def test_mgda_normalizations():
    grads = G([3, 0], [1, 2])
    losses = [2.0, 0.5]
    norms = grads.double().norm(dim=1).numpy()
    K = gram_matrix(grads)
    for mode, gn in [('l2', norms), ('loss', np.array(losses)), ('loss+', np.array(losses) * norms)]:
        r = run(MGDAAggregator(normalization=mode), grads, losses=losses)
        expected = min_norm_weights(K / np.outer(gn, gn))
        close(r.weights, expected), close(r.head_scales, expected)
        close(r.grad, torch.tensor(expected, dtype=torch.float32) @ grads)   # alpha on the raw gradients


# ----------------------------------------------------------------------------- IMTL-G
def test_imtl_known_answers():
    agg = IMTLGAggregator()
    r = run(agg, G([1, 0], [0, 2]))
    close(r.weights, [2 / 3, 1 / 3]), close(r.grad, [2 / 3, 2 / 3])
    r = run(agg, G([100, 0], [0, 1]))
    close(r.weights, [1 / 101, 100 / 101]), close(r.grad, [100 / 101, 100 / 101])
    r = run(agg, G([1, 2], [-2, -4]))
    close(r.grad, [0, 0], atol=1e-6)
    close(r.head_scales, [1, 1])


@pytest.mark.parametrize('seed', [0, 1])
def test_imtl_equal_projections(seed):
    grads = random_grads(4, 7, seed)
    r = run(IMTLGAggregator(), grads)
    unit = grads.double() / grads.double().norm(dim=1, keepdim=True)
    proj = unit @ r.grad.double()
    close(proj, proj[0].expand(4), atol=1e-5)
    assert float(r.weights.sum()) == pytest.approx(1, abs=1e-6)


# ----------------------------------------------------------------------------- CAGrad
def test_cagrad_known_answers():
    # symmetric orthogonal pair: w = (1/2, 1/2), g_w = g0, d = (1 + c) g0
    r = run(CAGradAggregator(c=0.4, rescale=0, reduction='mean'), G([1, 0], [0, 1]))
    close(r.grad, [0.7, 0.7])
    # official defaults: rescale 1 (/(1 + c^2)) and reduction 'sum' (x T)
    r = run(CAGradAggregator(c=0.4), G([1, 0], [0, 1]))
    close(r.grad, [1.4 / 1.16, 1.4 / 1.16])
    close(run(CAGradAggregator(c=0.4, rescale=2), G([1, 0], [0, 1])).grad, [1.4 / 1.4, 1.4 / 1.4])
    # c = 0: the average gradient (x T: the sum)
    grads = random_grads(3, 5)
    close(run(CAGradAggregator(c=0.0), grads).grad, grads.sum(0))
    r = run(CAGradAggregator(), G([1, 2], [-1, -2]))     # g0 = 0: nothing to improve
    close(r.grad, [0, 0]), close(r.head_scales, [1, 1])


@pytest.mark.parametrize('seed,c', [(0, 0.4), (1, 0.4), (2, 0.8)])
def test_cagrad_maximises_worst_case_improvement(seed, c):
    grads = random_grads(3, 3, seed)                 # in R^3 the ball can be sampled densely
    d = run(CAGradAggregator(c=c, rescale=0, reduction='mean'), grads).grad.double().numpy()
    g = grads.double().numpy()
    g0 = g.mean(0)
    radius = c * np.linalg.norm(g0)
    assert np.linalg.norm(d - g0) <= radius * (1 + 1e-5)
    ours = (g @ d).min()
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(200000, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    r = radius * rng.random(200000)[:, None] ** (1 / 3)
    samples = np.concatenate([g0 + radius * u, g0 + r * u])
    best = (samples @ g.T).min(1).max()
    assert best <= ours + 1e-6 * max(1.0, abs(ours))            # nothing in the ball does better
    assert ours - best <= 2e-3 * np.linalg.norm(g, axis=1).max() * radius   # and we reach the top


# ----------------------------------------------------------------------------- GradVac
def test_gradvac_first_step_is_pcgrad():
    r = run(GradVacAggregator(), G([1, 0], [-1, 1]))
    close(r.grad, [0.5, 1.5])


def test_gradvac_moves_cosine_to_target():
    agg = GradVacAggregator(beta=0.5)
    agg.bind(['a', 'b'])
    agg.load_state_dict(dict(targets=dict(a=dict(b=0.5), b=dict(a=0.5))))
    r = run(agg, G([1, 0], [0, 1]), tasks=['a', 'b'])
    s = 1 / math.sqrt(3)                             # cos(60 deg) = 0.5 needs the other component tan(30)
    close(r.grad, [1 + s, 1 + s]), close(r.weights, [1 + s, 1 + s])
    # the EMA moved half-way from 0.5 to the measured cosine 0
    assert agg.state_dict()['targets']['a']['b'] == pytest.approx(0.25)

    for seed in range(3):                           # general pair: cos(g_i', g_j) reaches the target
        grads = random_grads(2, 6, seed)
        agg = GradVacAggregator()
        agg.load_state_dict(dict(targets=dict(task0=dict(task1=0.3), task1=dict(task0=0.2))))
        C = agg.coefficients(gram_matrix(grads), ['task0', 'task1'])
        adjusted = torch.tensor(C) @ grads.double()
        cos = lambda x, y: float(x @ y / (x.norm() * y.norm()))  # noqa: E731
        assert cos(adjusted[0], grads[1].double()) == pytest.approx(0.3, abs=1e-6)  # float32 Gram
        assert cos(adjusted[1], grads[0].double()) == pytest.approx(0.2, abs=1e-6)


def test_gradvac_above_target_untouched_and_ema():
    agg = GradVacAggregator(beta=0.01)
    grads = G([1, 0], [1, 1])                        # cos 0.707 > target 0: plain sum
    r = run(agg, grads, tasks=['a', 'b'])
    close(r.grad, grads.sum(0))
    assert agg.state_dict()['targets']['a']['b'] == pytest.approx(0.01 * math.sqrt(0.5))


# ----------------------------------------------------------------------------- Aligned-MTL
def aligned_reference(grads, mode='min'):
    """The paper's formula from an SVD of G computed here: G_hat = s V U^T, update = 1^T G_hat."""
    g = grads.double().numpy()
    V, S, Ut = np.linalg.svd(g, full_matrices=False)
    keep = S ** 2 > (S ** 2).max() * len(g) * np.finfo(np.float32).eps
    V, S, Ut = V[:, keep], S[keep], Ut[keep]
    s = dict(min=S.min(), rmse=np.sqrt(np.mean(S ** 2)))[mode]
    aligned = s * V @ Ut
    return aligned.sum(0), aligned, V, Ut, s


def test_aligned_known_answers():
    agg = AlignedMTLAggregator()
    r = run(agg, G([3, 0], [0, 1]))
    close(r.grad, [1, 1]), close(r.weights, [1 / 3, 1]), close(r.head_scales, [1, 1])
    r = run(agg, G([2, 0], [0, 2]))
    close(r.grad, [2, 2]), close(r.weights, [1, 1])


@pytest.mark.parametrize('mode', ['min', 'rmse'])
@pytest.mark.parametrize('seed', [0, 1])
def test_aligned_matches_paper_formula(seed, mode):
    grads = random_grads(3, 6, seed)
    r = run(AlignedMTLAggregator(scale_mode=mode), grads)
    expected, aligned, V, Ut, s = aligned_reference(grads, mode)
    close(r.grad, expected, atol=1e-4)
    # the aligned system is orthogonal with equal norms s: condition number 1
    close(aligned @ aligned.T, s ** 2 * np.eye(3), atol=1e-8)
    # every principal direction u_k (right singular vector) gets the same singular value s: the
    # component of the update along u_k is s * sum_t V[t, k] (it would be sigma_k * sum_t V[t, k] for the sum)
    close(Ut @ r.grad.double().numpy(), s * V.sum(0), atol=1e-4)


def test_aligned_rank_deficient_and_weights():
    grads = random_grads(3, 6, 0)
    grads[2] = grads[0] + grads[1]
    r = run(AlignedMTLAggregator(), grads)
    close(r.grad, aligned_reference(grads)[0], atol=1e-4)
    assert np.linalg.matrix_rank(grads.double().numpy()) == 2
    agg = AlignedMTLAggregator(task_weights=dict(task0=2.0), scale_heads=True)
    r = run(agg, G([3, 0], [0, 1]))
    close(r.grad, [2, 1]), close(r.head_scales, r.weights)


# ----------------------------------------------------------------------------- Nash-MTL
def test_nash_known_answers():
    r = run(NashMTLAggregator(max_norm=0), G([1, 0], [0, 2]))      # K = diag(1, 4): alpha = (1, 1/2)
    close(r.weights, [1, 0.5]), close(r.head_scales, [1, 0.5]), close(r.grad, [1, 1])
    r = run(NashMTLAggregator(max_norm=1.0), G([1, 0], [0, 2]))    # |d| = sqrt 2 clipped to 1 (shared only)
    close(r.grad.norm(), 1.0), close(r.head_scales, [1, 0.5])
    r = run(NashMTLAggregator(max_norm=0), G([100, 0], [0, 1]))
    close(r.weights, [0.01, 1]), close(r.grad, [1, 1])


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_nash_solves_bargaining_equation(seed):
    grads = random_grads(3, 6, seed, conflict=False)
    r = run(NashMTLAggregator(max_norm=0), grads)
    K = gram_matrix(grads)
    alpha = r.weights.double().numpy()
    assert np.all(alpha > 0)
    close(alpha * (K @ alpha), np.ones(3), atol=1e-5)
    close(r.head_scales, alpha)


def test_nash_fallback_is_logged_and_counted(monkeypatch):
    logged = []
    monkeypatch.setattr(nashmtl_module, 'print_log', lambda msg, **kw: logged.append((msg, kw)))
    agg = NashMTLAggregator(max_norm=0)
    r = run(agg, G([1, 2], [-1, -2]))                 # zero in the hull: no solution
    assert agg.fallbacks == 1 and len(logged) == 1 and 'no solution' in logged[0][0]
    close(r.weights, [1, 1])                          # no good alpha yet: equal weights
    good = run(agg, G([1, 0], [0, 2])).weights
    r = run(agg, G([1, 2], [-1, -2]))
    assert agg.fallbacks == 2 and len(logged) == 2
    close(r.weights, good)                            # the last good alpha
    assert agg.state_dict()['fallbacks'] == 2


def test_nash_update_weights_every():
    agg = NashMTLAggregator(max_norm=0, update_weights_every=2)
    first = run(agg, G([1, 0], [0, 2])).weights
    close(run(agg, G([5, 0], [0, 1])).weights, first)            # reused
    close(run(agg, G([5, 0], [0, 1])).weights, [0.2, 1])         # solved again


# ----------------------------------------------------------------------------- every method
def build(name, **kw):
    return AGGREGATORS.build(dict(type=name, **kw))


@pytest.mark.parametrize('name', METHODS)
def test_weights_reproduce_grad(name):
    grads = random_grads(3, 50, 4)
    torch.manual_seed(0)
    r = build(name).aggregate(grads, torch.tensor([1.0, 2.0, 0.5]), torch.ones(3), None)
    assert r.grad.shape == (50,) and r.weights.shape == (3,) and r.head_scales.shape == (3,)
    assert r.grad.dtype == grads.dtype
    torch.testing.assert_close(r.grad, r.weights.to(grads) @ grads, rtol=0, atol=0)
    assert torch.isfinite(r.head_scales).all()


@pytest.mark.parametrize('name', METHODS)
def test_state_dict_round_trip(name):
    from test_aggregators_contract import assert_same
    steps = [random_grads(3, 10, s) for s in range(4)]
    agg = build(name)
    agg.bind(['a', 'b', 'c'])
    for grads in steps[:2]:
        agg.aggregate(grads, torch.ones(3), None, None)
    buf = io.BytesIO()
    torch.save(agg.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)   # checkpoints load with safe loading
    other = build(name)
    other.bind(['a', 'b', 'c'])
    other.load_state_dict(copy.deepcopy(state))
    assert_same(other.state_dict(), agg.state_dict())
    for grads in steps[2:]:
        expected = agg.aggregate(grads, torch.ones(3), None, None)
        got = other.aggregate(grads, torch.ones(3), None, None)
        torch.testing.assert_close(got.grad, expected.grad, rtol=0, atol=0)
        torch.testing.assert_close(got.head_scales, expected.head_scales, rtol=0, atol=0)


@pytest.mark.parametrize('name', METHODS)
def test_missing_task_row(name):
    agg = build(name)
    agg.bind(['a', 'b', 'c'])
    agg.aggregate(random_grads(3, 8, 0), torch.ones(3), None, None)
    before = copy.deepcopy(agg.state_dict())
    r = agg.aggregate(random_grads(2, 8, 1), torch.ones(2), None, ['a', 'c'])
    assert r.grad.shape == (8,) and r.weights.shape == (2,) and torch.isfinite(r.grad).all()
    if name == 'GradVacAggregator':  # pairs with the missing task keep their targets
        after = agg.state_dict()['targets']
        assert after['b'] == before['targets']['b']
        assert after['a']['b'] == before['targets']['a']['b']
        assert after['a']['c'] != before['targets']['a']['c']


@pytest.mark.parametrize('name', METHODS)
@pytest.mark.parametrize('zero_rows', [[1], [0, 1, 2]])
def test_zero_gradient_row(name, zero_rows):
    grads = random_grads(3, 8, 2)
    grads[zero_rows] = 0
    torch.manual_seed(0)
    r = build(name).aggregate(grads, torch.ones(3), None, None)
    for t in (r.grad, r.weights, r.head_scales):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(r.grad, r.weights @ grads, rtol=0, atol=0)
    if len(zero_rows) == 3:
        assert float(r.grad.abs().max()) == 0


@pytest.mark.parametrize('name', METHODS)
def test_single_task(name):
    grads = G([3, 4])
    r = build(name).aggregate(grads, torch.ones(1), None, None)
    assert torch.isfinite(r.grad).all() and float(r.grad @ grads[0]) > 0


@pytest.mark.parametrize('cfg', [
    dict(type='PCGradAggregator', reduction='max'),
    dict(type='CAGradAggregator', c=-0.1),
    dict(type='CAGradAggregator', rescale=3),
    dict(type='MGDAAggregator', normalization='norm'),
    dict(type='GradVacAggregator', beta=0.0),
    dict(type='GradVacAggregator', beta=1.5),
    dict(type='AlignedMTLAggregator', scale_mode='max'),
    dict(type='AlignedMTLAggregator', task_weights=dict(a=-1)),
    dict(type='NashMTLAggregator', update_weights_every=0),
    dict(type='NashMTLAggregator', max_norm=-1.0),
])
def test_bad_hyperparameters(cfg):
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


@pytest.mark.parametrize('name', METHODS)
def test_through_optim_wrapper(name):
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
    wrapper.update_tasks(model)

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
            torch.testing.assert_close(p0 - p.detach(), lr * float(ref.head_scales[i]) * g, rtol=1e-4, atol=1e-6)
    for i, t in enumerate(batch):
        assert wrapper.last_stats[f'{t}.weight'] == pytest.approx(float(ref.weights[i]), rel=1e-4, abs=1e-6)
