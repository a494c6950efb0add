"""MaxGNR: the noisy task weighted down (the two-task optimum), the solved weights against a grid on
the simplex, the estimated inner products and noise, sketch vs full-size statistics, warm-up, the count
sketch."""
import math

import numpy as np
import pytest
import torch

from projects.allinone.engine.aggregators import MaxGNRAggregator


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
        torch.testing.assert_close(r.own_scales, r.weights)
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
