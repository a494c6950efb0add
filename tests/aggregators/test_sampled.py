"""SDMGrad and MoDo: the methods that take independent gradient samples of each task (parts of its batch).

Their defining updates on hand-made sample sets, which sample each role reads, the optimality of
SDMGrad's inner problem, and the real optim wrapper with three backward passes per task against a
reference computed part by part; the model's batch split."""
import math

import numpy as np
import pytest
import torch

from projects.allinone.engine.aggregators import MoDoAggregator, SDMGradAggregator
from projects.allinone.engine.aggregators._gram import project_simplex
from projects.allinone.engine.aggregators.base import build_aggregator
from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper

from agg_props import TASKS, G, TinyMTL, assert_same_state, close, random_grads, roundtrip

T2 = ['a', 'b']


def samples_of(*mats):
    return torch.stack([m if isinstance(m, torch.Tensor) else G(*m) for m in mats])


# ------------------------------------------------------------------------------------------- MoDo
def test_modo_one_step_by_hand():
    """lambda = Proj(1/2 - gamma (G1 G2^T lambda + rho lambda)); with G1 G2^T = diag(1, 0) the task with
    the gradient loses gamma / 4 of weight to the other (the projection shifts both alike)."""
    gamma, rho = 0.1, 0.3
    agg = MoDoAggregator(gamma=gamma, rho=rho)
    agg.bind(T2)
    S = samples_of([[1, 0], [0, 0]], [[1, 0], [0, 1]], [[2, 1], [-1, 3]])  # z1, z2, z3
    r = agg.aggregate_samples(S, torch.ones(2), torch.ones(2), T2)
    close(r.weights, [0.5 - gamma / 4, 0.5 + gamma / 4])
    close(r.grad, (0.5 - gamma / 4) * S[2, 0] + (0.5 + gamma / 4) * S[2, 1])  # the step reads z3 only
    close(r.own_scales, [1 / 3, 1 / 3])  # the mean of the three parts' own gradients
    assert agg.state_dict() == dict(lambd=dict(a=pytest.approx(0.475), b=pytest.approx(0.525)))


def test_modo_lambda_follows_its_recursion_and_stays_on_the_simplex():
    agg = MoDoAggregator(gamma=0.05, rho=0.1)
    agg.bind(TASKS)
    lam = np.full(3, 1 / 3)
    for step in range(6):
        S = torch.stack([random_grads(3, 10, seed=10 * step + s) for s in range(3)])
        r = agg.aggregate_samples(S, torch.ones(3), torch.ones(3), TASKS)
        K = (S[0] @ S[1].T).numpy()
        lam = project_simplex(lam - 0.05 * (K @ lam + 0.1 * lam))
        close(r.weights, lam)
        assert abs(float(r.weights.sum()) - 1) < 1e-12 and float(r.weights.min()) >= 0
        close(r.grad, torch.tensor(lam) @ S[2])


def test_modo_weights_do_not_read_the_step_sample():
    """Changing z3 changes the step, never lambda; changing z1 changes lambda."""
    base = [random_grads(3, 10, seed=s) for s in range(3)]
    out = {}
    for key, change in (('same', None), ('z3', 2), ('z1', 0)):
        S = [x.clone() for x in base]
        if change is not None:
            S[change] = S[change] * 3 + 1
        agg = MoDoAggregator(gamma=0.05)
        agg.bind(TASKS)
        out[key] = agg.aggregate_samples(torch.stack(S), torch.ones(3), torch.ones(3), TASKS)
    assert torch.equal(out['same'].weights, out['z3'].weights)
    assert not torch.equal(out['same'].grad, out['z3'].grad)
    assert not torch.allclose(out['same'].weights, out['z1'].weights)


# ---------------------------------------------------------------------------------------- SDMGrad
def test_sdmgrad_symmetric_tasks_keep_equal_weights():
    """Two orthogonal gradients of equal norm: w stays (1/2, 1/2), so the update is their mean."""
    agg = SDMGradAggregator()
    agg.bind(T2)
    S = samples_of([[3, 0], [0, 3]], [[1, 0], [0, 1]], [[1, 0], [0, 1]])
    r = agg.aggregate_samples(S, torch.ones(2), torch.ones(2), T2)
    close(r.weights, [0.5, 0.5])
    close(r.grad, [1.5, 1.5])  # on zeta (role 0)


def test_sdmgrad_inner_problem_reaches_its_optimum():
    """With many small inner steps w solves min_{w in simplex} 1/2 w^T GG w + lamda w^T Gg (GG symmetric
    when xi = xi'): the KKT conditions hold (equal gradient on the support, no smaller one outside), and
    the weights are (w + lamda / T) / (1 + lamda)."""
    lamda = 0.3
    agg = SDMGradAggregator(lamda=lamda, niter=4000, lr=0.05, momentum=0.0)
    agg.bind(TASKS)
    rows = random_grads(3, 12, seed=3)
    rows[2] *= 4  # one large task: the min-norm part leans away from it
    S = torch.stack([random_grads(3, 12, seed=9), rows, rows])
    r = agg.aggregate_samples(S, torch.ones(3), torch.ones(3), TASKS)
    w = np.array([agg.state_dict()['w'][t] for t in TASKS])
    GG = (rows @ rows.T).numpy()
    GG = GG / (np.mean(np.sqrt(np.diag(GG))) ** 2 + 1e-8)
    q = GG @ w + lamda * GG.mean(axis=1)
    support = w > 1e-9
    assert abs(w.sum() - 1) < 1e-12 and w.min() >= 0 and support.sum() >= 1
    assert np.ptp(q[support]) < 1e-6 and (q[~support] >= q[support].min() - 1e-6).all()
    close(r.weights, (w + lamda / 3) / (1 + lamda))
    close(r.grad, r.weights @ S[0])


def test_sdmgrad_large_lamda_is_the_mean_and_zero_lamda_a_stochastic_mgda():
    S = torch.stack([random_grads(3, 10, seed=s) for s in range(3)])
    big = SDMGradAggregator(lamda=1e9)
    big.bind(TASKS)
    close(big.aggregate_samples(S, torch.ones(3), torch.ones(3), TASKS).weights, [1 / 3] * 3, atol=1e-8)
    zero = SDMGradAggregator(lamda=0.0, niter=3000, lr=0.05, momentum=0.0)
    zero.bind(TASKS)
    same = torch.stack([S[0], S[1], S[1]])  # xi = xi': the min-norm point of the convex hull (MGDA)
    r = zero.aggregate_samples(same, torch.ones(3), torch.ones(3), TASKS)
    d = r.weights @ S[1]  # the direction on xi's gradients: no task gradient has a negative product ...
    # ... at the min-norm point, g_t . d >= |d|^2 for every task (the optimality condition of MGDA)
    assert all(float(S[1][t] @ d) >= float(d @ d) - 1e-6 for t in range(3))


def test_fewer_samples_share_the_roles():
    """samples=1 (or a plain (T, n) matrix): every role reads the one sample."""
    grads = random_grads(3, 8)
    for cls in (SDMGradAggregator, MoDoAggregator):
        a, b = cls(samples=1), cls()
        a.bind(TASKS), b.bind(TASKS)
        ra = a.aggregate(grads, torch.ones(3), torch.ones(3), TASKS)
        rb = b.aggregate_samples(torch.stack([grads] * 3), torch.ones(3), torch.ones(3), TASKS)
        close(ra.weights, rb.weights)
        close(ra.grad, rb.grad)
        close(ra.own_scales, [1.0] * 3)


# ------------------------------------------------------------------------------- through the wrapper
def parts_reference(model, agg, batch, k, lr):
    """One SGD step by hand: each task's k parts backed alone, the (k, T, n) samples to the aggregator,
    each head the mean of its parts' gradients times its own scale (x k)."""
    shared = list(model.shared.parameters())
    samples = [[None] * len(batch) for _ in range(k)]
    heads = {}
    for i, (task, x) in enumerate(batch.items()):
        for s, part in enumerate(torch.tensor_split(x, k)):
            model.zero_grad(set_to_none=True)
            model.loss(task, part).backward()
            samples[s][i] = torch.cat([p.grad.reshape(-1) for p in shared])
            got = [p.grad.clone() for p in model.heads[task].parameters()]
            heads[task] = got if s == 0 else [h + g for h, g in zip(heads[task], got)]
    model.zero_grad(set_to_none=True)
    S = torch.stack([torch.stack(row) for row in samples])
    r = agg.aggregate_samples(S, torch.ones(len(batch)), torch.ones(len(batch)), list(batch))
    with torch.no_grad():
        offset = 0
        for p in shared:
            p -= lr * r.grad[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        for i, task in enumerate(batch):
            for p, g in zip(model.heads[task].parameters(), heads[task]):
                p -= lr * float(r.own_scales[i]) * g
    return r


@pytest.mark.parametrize('cfg', [dict(type='SDMGradAggregator'), dict(type='MoDoAggregator', gamma=0.05),
                                 dict(type='SDMGradAggregator', samples=2)])
def test_through_the_wrapper_with_k_backward_passes_per_task(cfg):
    lr, k = 1e-2, cfg.get('samples', 3)
    model, ref = TinyMTL(), TinyMTL()
    ref_agg = build_aggregator(dict(cfg))
    ref_agg.bind(TASKS)
    wrapper = MultiTaskOptimWrapper(torch.optim.SGD(model.parameters(), lr=lr), aggregator=dict(cfg),
                                    stats_interval=2)
    assert wrapper.gradient_samples == k
    wrapper.bind(model.partition())
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        batch = {t: torch.randn(6, 4, generator=g) for t in TASKS}
        for task, x in batch.items():
            for part in torch.tensor_split(x, k):
                wrapper.backward_task(task, model.loss(task, part))
        wrapper.update_tasks()
        r = parts_reference(ref, ref_agg, batch, k, lr)
        for p, q in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
        assert [wrapper.last_stats[f'{t}.weight'] for t in TASKS] == pytest.approx(r.weights.tolist())
        if step % 2 == 0:
            assert math.isfinite(wrapper.last_stats['cos.det-seg'])
    state = roundtrip(wrapper.state_dict())['aggregator']
    assert_same_state(state, ref_agg.state_dict(), rtol=1e-6)  # float32 rows summed in another order
    with pytest.raises(RuntimeError, match=f"task 'det' was backed {k + 1} times in one iteration; the "
                                           f'aggregator takes {k} gradient sample'):
        for _ in range(k + 1):
            wrapper.backward_task('det', model.loss('det', torch.ones(2, 4)))


def test_a_nonfinite_part_drops_the_whole_task_for_the_step():
    model = TinyMTL()
    wrapper = MultiTaskOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0),
                                    aggregator=dict(type='MoDoAggregator'), stats_interval=0)
    wrapper.bind(model.partition())
    x = torch.randn(6, 4)
    for task in TASKS:
        for s, part in enumerate(torch.tensor_split(x, 3)):
            loss = model.loss(task, part)
            wrapper.backward_task(task, loss * float('nan') if (task, s) == ('seg', 1) else loss)
    wrapper.update_tasks()
    assert wrapper.skipped['seg'] == 1
    assert 'seg.weight' not in wrapper.last_stats and math.isfinite(wrapper.last_stats['cls.weight'])
    assert wrapper.aggregator.state_dict()['lambd'].keys() == {'det', 'cls'}


def test_bad_arguments_name_the_method():
    with pytest.raises(ValueError, match='SDMGradAggregator.samples must be an integer >= 1'):
        SDMGradAggregator(samples=0)
    with pytest.raises(ValueError, match='MoDoAggregator.gamma must be a finite number > 0'):
        MoDoAggregator(gamma=0)


# ---------------------------------------------------------------------------------------- the model
def test_split_batch_parts_and_the_error_on_small_batches():
    from projects.allinone.models.allinone_model import split_batch
    batch = dict(inputs=list(range(7)), data_samples=list('abcdefg'))
    parts = split_batch(batch, 3, 'det')
    assert [p['data_samples'] for p in parts] == [list('ab'), list('cde'), list('fg')]
    assert [p['inputs'] for p in parts] == [[0, 1], [2, 3, 4], [5, 6]]
    with pytest.raises(ValueError, match=r"task 'cls': a batch of 2 sample\(s\) cannot give the 3 independent"):
        split_batch(dict(inputs=[0, 1], data_samples=['a', 'b']), 3, 'cls')


@pytest.mark.slow
@pytest.mark.parametrize('agg', [dict(type='SDMGradAggregator', samples=2), dict(type='MoDoAggregator', samples=2)])
def test_one_config_line_trains_the_demo_model(registered, demo_cfg, agg):
    """The Runner with the real demo model: each task's batch of 2 in two parts (one backward each)."""
    import copy

    from mmengine.hooks import Hook
    from mmengine.runner import Runner
    cfg = copy.deepcopy(demo_cfg)
    cfg.optim_wrapper.aggregator = agg
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    runner = Runner.from_cfg(cfg)
    calls = []

    class CountTaskGradients(Hook):  # an observer on the wrapper's public per-task gradient hook
        def before_train(self, runner):
            runner.optim_wrapper.register_task_grad_hook(lambda task, shared, own: calls.append(task))

    runner.register_hook(CountTaskGradients())
    runner.train()
    assert calls == [t for _ in range(4) for t in ('det', 'seg', 'cls') for _ in range(2)]
    state = runner.optim_wrapper.aggregator.state_dict()
    weights = np.array(list(next(iter(state.values())).values()))
    assert len(weights) == 3 and abs(weights.sum() - 1) < 1e-9 and not np.allclose(weights, 1 / 3)
    for t in ('det', 'seg', 'cls'):
        assert math.isfinite(runner.message_hub.get_scalar(f'train/{t}.weight').current())
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())
