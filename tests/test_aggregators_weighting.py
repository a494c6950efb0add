"""Loss-weighting aggregators (Equal, UW, DWA, GradNorm, RLW, FAMO) and MaxGNR: properties that a
wrong implementation would break, path equivalence, state round trips, missing tasks, the wrapper."""
import io
import math

import numpy as np
import pytest
import torch

from projects.allinone.engine.aggregators import (DWAAggregator, EqualAggregator, FAMOAggregator,
                                                  GradNormAggregator, MaxGNRAggregator, RLWAggregator,
                                                  UncertaintyAggregator)
from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper
from projects.allinone.registry import AGGREGATORS

TASKS = ['det', 'seg', 'cls']

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
LINEAR = [k for k in CONFIGS if k != 'MaxGNRAggregator']


def build(name, **extra):
    return AGGREGATORS.build(dict(type=name, **CONFIGS[name], **extra))


def make_stream(steps=8, n=40, seed=0, tasks=TASKS):
    """(grads (T, n), losses (T,), tasks) per step: positive losses that fall at different rates."""
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
    """What the optim wrapper does in streaming mode: factors task by task, then finish."""
    norms = torch.linalg.vector_norm(grads, dim=1)
    head = torch.zeros_like(norms)
    factors = torch.tensor([agg.task_factor(float(n), 0.0, float(l), t) for n, l, t in zip(norms, losses, tasks)],
                           dtype=torch.float64)
    weights, head_scales, scale = agg.finish(norms, head, factors, losses, tasks)
    grad = scale * (factors @ grads)
    return grad, weights, head_scales


def matrix_step(agg, grads, losses, tasks):
    r = agg.aggregate(grads, losses, torch.zeros(len(tasks), dtype=grads.dtype), tasks)
    return r.grad, r.weights, r.head_scales


def roundtrip(state):
    """Through torch.save / torch.load(weights_only=True), as a checkpoint would go."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ---------------------------------------------------------------------------- every method
@pytest.mark.parametrize('name', list(CONFIGS))
def test_build_from_registry(name):
    agg = AGGREGATORS.build(dict(type=name))
    assert type(agg).__name__ == name
    agg.bind(TASKS)
    assert repr(agg).startswith(name)


@pytest.mark.parametrize('name', LINEAR)
def test_streaming_and_matrix_paths_agree(name):
    stream = make_stream(steps=10)
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
    if name not in ('EqualAggregator',):
        assert len(seen) > 1, 'the weights never changed'


@pytest.mark.parametrize('name', list(CONFIGS))
def test_state_dict_round_trip_gives_identical_next_results(name):
    stream = make_stream(steps=12)
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


@pytest.mark.parametrize('name', list(CONFIGS))
def test_missing_task_row_leaves_its_state_alone(name):
    agg = build(name)
    agg.bind(TASKS)
    stream = make_stream(steps=6)
    for step in stream[:4]:
        matrix_step(agg, *step)
    before = agg.state_dict()
    assert _has_no_numpy(before)
    grads, losses, _ = stream[4]
    g, w, h = matrix_step(agg, grads[[0, 2]], losses[[0, 2]], ['det', 'cls'])
    assert g.shape == grads[0].shape and w.shape == (2,) and torch.isfinite(g).all()
    after = agg.state_dict()

    def seg_entries(state):
        """Every leaf of the state that belongs to task 'seg' (dicts keyed by task name)."""
        found = []
        if isinstance(state, dict):
            for k, v in state.items():
                if k == 'seg' and not isinstance(v, dict):
                    found.append(v)
                else:
                    found += seg_entries(v)
        return found

    if name == 'RLWAggregator':
        return  # its only state is the next draw, redrawn for every bound task each step
    assert len(seg_entries(before)) == len(seg_entries(after))
    for x, y in zip(seg_entries(before), seg_entries(after)):
        assert (torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y)
    if name != 'EqualAggregator':
        assert seg_entries(before), 'expected per-task state for seg'


@pytest.mark.parametrize('name,kwargs,arg', [
    ('EqualAggregator', dict(weights=dict(det=-1.0)), 'weights'),
    ('EqualAggregator', dict(weights=[1, 2]), 'weights'),
    ('UncertaintyAggregator', dict(kind='poisson'), 'kind'),
    ('UncertaintyAggregator', dict(lr=0), 'lr'),
    ('UncertaintyAggregator', dict(optimizer='rmsprop'), 'optimizer'),
    ('DWAAggregator', dict(window=0), 'window'),
    ('DWAAggregator', dict(temperature=-2), 'temperature'),
    ('GradNormAggregator', dict(alpha=-1), 'alpha'),
    ('GradNormAggregator', dict(lr=float('nan')), 'lr'),
    ('GradNormAggregator', dict(min_weight=0), 'min_weight'),
    ('RLWAggregator', dict(total=0), 'total'),
    ('RLWAggregator', dict(seed=1.5), 'seed'),
    ('FAMOAggregator', dict(lr=-0.1), 'lr'),
    ('FAMOAggregator', dict(gamma=-1), 'gamma'),
    ('MaxGNRAggregator', dict(beta=1.0), 'beta'),
    ('MaxGNRAggregator', dict(mean_beta=-0.1), 'mean_beta'),
    ('MaxGNRAggregator', dict(warmup=1), 'warmup'),
    ('MaxGNRAggregator', dict(update_interval=0), 'update_interval'),
    ('MaxGNRAggregator', dict(sketch_dim=0), 'sketch_dim'),
    ('MaxGNRAggregator', dict(min_ratio=2), 'min_ratio'),
])
def test_bad_hyperparameters_name_the_argument(name, kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        AGGREGATORS.build(dict(type=name, **kwargs))


# ---------------------------------------------------------------------------- Equal
def test_equal_fixed_weights():
    agg = EqualAggregator(weights=dict(det=2.0, cls=0.5))
    agg.bind(TASKS)
    grads = torch.randn(3, 7, dtype=torch.float64)
    r = agg.aggregate(grads, torch.ones(3), None, TASKS)
    w = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(r.weights, w)
    torch.testing.assert_close(r.head_scales, w)
    torch.testing.assert_close(r.grad, w @ grads)
    with pytest.raises(ValueError, match='depth'):
        EqualAggregator(weights=dict(depth=1.0)).bind(TASKS)


# ---------------------------------------------------------------------------- Uncertainty
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


# ---------------------------------------------------------------------------- DWA
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


# ---------------------------------------------------------------------------- GradNorm
def test_gradnorm_alpha0_equalises_weighted_norms():
    agg = GradNormAggregator(alpha=0.0, lr=0.02)
    agg.bind(['a', 'b'])
    grads = torch.zeros(2, 4, dtype=torch.float64)
    grads[0, 0], grads[1, 1] = 1.0, 100.0
    losses = torch.ones(2, dtype=torch.float64)
    ratios = []
    for _ in range(300):
        w = agg.aggregate(grads, losses, None, ['a', 'b']).weights
        assert float(w.sum()) == pytest.approx(2.0)
        assert (w > 0).all()
        ratios.append(float(w[0] * 1.0 / (w[1] * 100.0)))
    # with a constant lr the L1 objective ends in a small limit cycle around w_a * 1 = w_b * 100
    assert all(0.8 < r < 1.25 for r in ratios[-50:])
    assert sum(ratios[-50:]) / 50 == pytest.approx(1.0, rel=0.05)
    assert float(agg.next_weights()[0]) == pytest.approx(200 / 101, rel=0.01)


def test_gradnorm_favours_the_slowly_training_task():
    agg = GradNormAggregator(alpha=1.5, lr=0.02)
    agg.bind(['fast', 'slow'])
    grads = torch.eye(2, dtype=torch.float64)  # equal norms
    for k in range(100):
        losses = torch.tensor([0.97 ** k, 1.0], dtype=torch.float64)
        agg.aggregate(grads, losses, None, ['fast', 'slow'])
    w = agg.next_weights()
    assert w[1] > w[0]
    assert float(w.sum()) == pytest.approx(2.0)
    # the target: G_t proportional to r_t^alpha (r relative inverse training rate)
    rel = torch.tensor([0.97 ** 99, 1.0], dtype=torch.float64)
    r = rel / rel.mean()
    # the target ratio (r_slow / r_fast)^alpha is ~92 here; the weights follow it with some lag
    assert float(w[1] / w[0]) > 0.5 * float((r[1] / r[0]) ** 1.5)


# ---------------------------------------------------------------------------- RLW
def test_rlw_weights_are_a_random_softmax():
    agg = RLWAggregator()
    grads = torch.randn(3, 4, dtype=torch.float64)
    agg.bind(TASKS)
    ws = [agg.aggregate(grads, torch.ones(3), None, TASKS).weights for _ in range(5)]
    for w in ws:
        assert (w > 0).all() and float(w.sum()) == pytest.approx(1.0)
    assert not torch.equal(ws[0], ws[1])
    # exactly softmax of standard normal draws from the method's generator (seed 0 by default) ...
    expect = torch.softmax(torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), 0)
    torch.testing.assert_close(ws[0], expect)
    # ... so reproducible whatever the global RNG does (it differs per rank under diff_rank_seed)
    torch.manual_seed(99)
    again = RLWAggregator()
    again.bind(TASKS)
    for w in ws:
        torch.testing.assert_close(again.aggregate(grads, torch.ones(3), None, TASKS).weights, w)
    other = RLWAggregator(seed=1)
    other.bind(TASKS)
    assert not torch.equal(other.next_weights(TASKS), ws[0])
    assert float(RLWAggregator(total=3).next_weights(TASKS).sum()) == pytest.approx(3.0)


def test_rlw_private_seed_resumes_the_same_sequence():
    a = RLWAggregator(seed=7)
    a.bind(TASKS)
    grads = torch.randn(3, 4)
    for _ in range(3):
        a.aggregate(grads, torch.ones(3), None, TASKS)
    b = RLWAggregator(seed=7)
    b.bind(TASKS)
    b.load_state_dict(roundtrip(a.state_dict()))
    torch.manual_seed(123)  # the global RNG does not matter
    wa = [a.aggregate(grads, torch.ones(3), None, TASKS).weights for _ in range(3)]
    torch.manual_seed(456)
    wb = [b.aggregate(grads, torch.ones(3), None, TASKS).weights for _ in range(3)]
    for x, y in zip(wa, wb):
        assert torch.equal(x, y)


# ---------------------------------------------------------------------------- FAMO
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
    torch.testing.assert_close(r.head_scales, w)
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


# ---------------------------------------------------------------------------- MaxGNR
def gnr_stream(agg, G, noise_std, steps, seed=0):
    """Feed ``steps`` noisy copies of the mean gradients G (T, n); noise_std[t] = sqrt(s_t)."""
    gen = torch.Generator().manual_seed(seed)
    T, n = G.shape
    tasks = [f't{i}' for i in range(T)]
    for _ in range(steps):
        grads = G + torch.tensor(noise_std)[:, None] * torch.randn(T, n, generator=gen) / math.sqrt(n)
        agg.aggregate(grads, torch.ones(T), None, tasks)
    return agg.next_weights(tasks)


def sum_log_gnr(w, G, s):
    """Independent, literal evaluation of sum_i log GNR_i(w) from the true means and noise."""
    T = len(w)
    total = 0.0
    for i in range(T):
        noise = w[i] ** 2 * s[i]
        for j in range(T):
            if j != i:
                noise += w[j] ** 2 * (G[j] @ G[j] + s[j])
                for k in range(T):
                    if k != i and k != j:
                        noise += w[j] * w[k] * (G[j] @ G[k])
        total += math.log(w[i] ** 2 * (G[i] @ G[i]) / noise)
    return total


def unit_vectors(k, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(k, n, generator=g)
    return u / u.norm(dim=1, keepdim=True)


def test_maxgnr_weights_down_the_noisy_task():
    G = unit_vectors(2, 2000)  # the same mean norm, nearly orthogonal
    w = gnr_stream(MaxGNRAggregator(warmup=20, update_interval=10), G, [1.0, 10.0], 200)
    assert w[1] < w[0]
    assert float(w.sum()) == pytest.approx(2.0)
    # for two orthogonal tasks the optimum is w_1^2 / w_0^2 = sqrt((a + s_0) s_0 / ((a + s_1) s_1))
    expect = ((1 + 1) * 1 / ((1 + 100) * 100)) ** 0.25
    assert float(w[1] / w[0]) == pytest.approx(expect, rel=0.1)


def test_maxgnr_opposed_task_maximises_the_objective():
    u = unit_vectors(2, 2000, seed=1)
    G = torch.stack([u[0] + 0.3 * u[1], u[0] - 0.3 * u[1], -u[0]])  # the third opposes the first two
    s = [0.5, 0.5, 0.5]
    agg = MaxGNRAggregator(warmup=20, update_interval=10, sketch_dim=None)
    w = gnr_stream(agg, G, [math.sqrt(v) for v in s], 300)
    assert float(w.sum()) == pytest.approx(3.0) and (w > 0).all()
    Gd = G.double()
    best = sum_log_gnr(w.tolist(), Gd, s)
    # no point of a grid on the simplex does better (up to the estimation noise of the EMAs)
    grid = np.linspace(0.05, 2.9, 58)
    for a in grid:
        for b in grid:
            if a + b < 2.95:
                assert sum_log_gnr([a, b, 3 - a - b], Gd, s) <= best + 0.02
    assert agg.solver_failures == 0
    from mmengine.logging import MessageHub
    scalars = MessageHub.get_current_instance().log_scalars
    assert scalars['train/maxgnr.solver_failures'].current() == 0
    assert all(v > 0 for v in agg.last_gnr.values()) and set(agg.last_gnr) == {'t0', 't1', 't2'}
    assert sum_log_gnr(w.tolist(), Gd, s) > sum_log_gnr([1.0, 1.0, 1.0], Gd, s)


def test_maxgnr_estimates_inner_products_and_noise():
    G = unit_vectors(3, 1000, seed=2) * torch.tensor([[1.0], [2.0], [0.5]])
    std = [0.5, 1.0, 2.0]
    agg = MaxGNRAggregator(sketch_dim=None, beta=0.995)
    gnr_stream(agg, G, std, 600)
    Q, s = agg.statistics(['t0', 't1', 't2'])
    Gd = G.double()
    expect_Q = (Gd @ Gd.T).numpy() + np.diag(np.square(std))
    np.testing.assert_allclose(np.diag(Q), np.diag(expect_Q), rtol=0.15)
    np.testing.assert_allclose(s, np.square(std), rtol=0.15)
    assert abs(Q[0, 1] - expect_Q[0, 1]) < 0.1


def test_maxgnr_sketch_and_full_size_give_close_weights():
    G = unit_vectors(3, 8000, seed=3) * torch.tensor([[1.0], [3.0], [0.3]])
    std = [1.0, 5.0, 0.5]
    full = gnr_stream(MaxGNRAggregator(sketch_dim=None, warmup=20), G, std, 120)
    sketch = gnr_stream(MaxGNRAggregator(sketch_dim=1024, warmup=20), G, std, 120)
    assert not torch.allclose(full, torch.ones(3, dtype=full.dtype), atol=0.05)
    torch.testing.assert_close(sketch, full, rtol=0.02, atol=0)


def test_maxgnr_equal_weights_during_warmup_and_grad_is_weighted_sum():
    agg = MaxGNRAggregator(warmup=5, update_interval=1, sketch_dim=16)
    G = unit_vectors(2, 100)
    gen = torch.Generator().manual_seed(0)
    for k in range(8):
        grads = G + torch.tensor([[0.1], [3.0]]) * torch.randn(2, 100, generator=gen) / 10
        r = agg.aggregate(grads, torch.ones(2), None, ['x', 'y'])
        if k < 5:
            torch.testing.assert_close(r.weights, torch.ones(2))
        torch.testing.assert_close(r.grad, r.weights @ grads)
        torch.testing.assert_close(r.head_scales, r.weights)
    assert r.weights[1] < r.weights[0]


def test_count_sketch_preserves_inner_products():
    from projects.allinone.engine.aggregators.maxgnr import CountSketch
    x, y = torch.randn(2, 50000, dtype=torch.float64)
    y = 0.6 * x + 0.8 * y
    sk = CountSketch(4096, seed=1)
    sx, sy = sk(x), sk(y)
    assert float(sx @ sy) == pytest.approx(float(x @ y), rel=0.1)
    assert float(sx @ sx) == pytest.approx(float(x @ x), rel=0.1)
    torch.testing.assert_close(CountSketch(4096, seed=1)(x), sx)  # fixed by the seed
    torch.testing.assert_close(sk(torch.stack([x, y])), torch.stack([sx, sy]))


# ---------------------------------------------------------------------------- through the optim wrapper
@pytest.mark.parametrize('name', list(CONFIGS))
def test_each_method_trains_through_the_optim_wrapper(name):
    from test_optim_wrapper import TinyMTL, batches, params_of, run_wrapper
    model = TinyMTL()
    before = params_of(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    cfg = dict(type=name, **CONFIGS[name])
    if name == 'EqualAggregator':
        cfg['weights'] = dict(a=3.0)
    if name == 'UncertaintyAggregator':  # the kinds by this model's task names (unknown names are an error)
        cfg['kind'] = dict(a='regression', b='classification')
    wrapper = MultiTaskOptimWrapper(opt, aggregator=cfg, stats_interval=3)
    weights = []
    for batch in batches(n=6):
        run_wrapper(model, wrapper, batch)
        weights.append((wrapper.last_stats['a.weight'], wrapper.last_stats['b.weight']))
    for p, p0 in zip(model.parameters(), before):
        assert torch.isfinite(p).all()
    assert any(not torch.equal(p, p0) for p, p0 in zip(model.parameters(), before))
    assert all(math.isfinite(w) for ws in weights for w in ws)
    if name == 'EqualAggregator':
        assert set(weights) == {(3.0, 1.0)}
    else:
        assert len(set(weights)) > 1
    # the state's values survive a checkpoint (bit-identical continuation: test_aggregators_contract.py)
    from test_aggregators_contract import assert_same
    state = roundtrip(wrapper.state_dict())  # checkpoints load with weights_only
    fresh = MultiTaskOptimWrapper(torch.optim.SGD(TinyMTL().parameters(), lr=0.05),
                                  aggregator=cfg)
    fresh.load_state_dict(state)
    assert_same(fresh.aggregator.state_dict(), wrapper.aggregator.state_dict())
