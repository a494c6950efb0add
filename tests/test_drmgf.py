"""DR-MGF: importance-weighted fusion, the gated forward, the importances' freeze, resume and ranking.

The arithmetic on a small synthetic two-task model (seconds); the loop end to end on the demo
(marked slow): a run resumed inside a round ends where the uninterrupted one does.
"""
import copy
import os.path as osp

import pytest
import torch
from mmengine.model import BaseModule
from torch import nn

from conftest import register_toy, toy_task_base


class DRMGFToyBackbone(BaseModule):
    """A conv (per-connection importances), a BN and a linear layer (per-row importances)."""

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 8)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return (self.fc(h), )


class DRMGFToyTask(toy_task_base()):
    """Regression on the shared features; ``used`` = how many of the 8 features the task reads.
    ``grow=True``: the loss wants the magnitude of every feature it reads larger (target far above)."""

    def __init__(self, used=8, seed=0, grow=False, backbone=None, data_preprocessor=None, init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.head = nn.Linear(8, 1)
        mask = torch.zeros(8)
        mask[:used] = 1
        self.register_buffer('mask', mask, persistent=False)
        self.teacher = torch.randn(8, generator=torch.Generator().manual_seed(seed)) * 3
        self.grow = grow

    def loss(self, feats, data_samples=None):
        f = feats[0] * self.mask
        if self.grow:
            return dict(loss=(f.abs().sum(-1) - 20).square().mean() / 100 + 0 * self.head.weight.sum())
        target = (f.detach().sign() * self.teacher * self.mask).sum(-1, keepdim=True)
        return dict(loss=(self.head(f) - target).square().mean())

    def predict(self, feats, data_samples=None):
        return self.head(feats[0] * self.mask)



@pytest.fixture(scope='module')
def toy(registered):
    register_toy(DRMGFToyBackbone, DRMGFToyTask)
    return dict(type='AllInOneModel', backbone=dict(type='DRMGFToyBackbone'),
                tasks=dict(a=dict(type='DRMGFToyTask', used=8, seed=1), b=dict(type='DRMGFToyTask', used=8, seed=2)))


def build(cfg, seed=0):
    from projects.allinone.registry import MODELS
    torch.manual_seed(seed)
    return MODELS.build(copy.deepcopy(cfg))


def batches(seed, n=16):
    g = torch.Generator().manual_seed(seed)
    return {t: dict(inputs=torch.randn(n, 2, 6, 6, generator=g), data_samples=None) for t in ('a', 'b')}


def endless(seed=1000):
    i = seed
    while True:
        yield batches(i)
        i += 1


def wrapper_for(model, lr=0.05):
    from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper
    return MultiTaskOptimWrapper(torch.optim.SGD(model.parameters(), lr=lr), aggregator=dict(type='SumAggregator'))


def fake_passes(drmgf, model, seed=0):
    """Each task's pass moves every parameter by its own random delta; returns {task: {name: delta}}."""
    g = torch.Generator().manual_seed(seed)
    drmgf.begin_round(model)
    deltas = {}
    for t in drmgf.tasks:
        drmgf.restore_start(model)
        deltas[t] = {}
        with torch.no_grad():
            for n, p in model.named_parameters():
                d = torch.randn(p.shape, generator=g)
                p.add_(d)
                deltas[t][n] = d
        drmgf.end_pass(model, t, gated=False)
    return deltas


# ---------------------------------------------------------------------- fusion arithmetic
def test_layers_and_importance_shapes(toy):
    from projects.allinone.engine.drmgf import DRMGF
    model = build(toy)
    d = DRMGF(model)
    assert d.layer_names == ['backbone.conv', 'backbone.fc']  # heads are not shared
    v = d.importance[d._key('a', 'backbone.conv')]
    assert v.shape == (4, 2)  # one per (output, input) connection of the 3x3 kernels
    torch.testing.assert_close(v, model.backbone.conv.weight.detach().flatten(2).norm(dim=2))
    assert d.importance[d._key('b', 'backbone.fc')].shape == (8, 1)  # one per output row
    assert DRMGF(model, layers=['fc']).layer_names == ['backbone.fc']
    with pytest.raises(KeyError, match='nope'):
        DRMGF(model, layers=['nope'])


def test_equal_importances_and_coefficients_fuse_to_the_mean_update(toy):
    from projects.allinone.engine.drmgf import DRMGF
    model = build(toy)
    d = DRMGF(model)
    with torch.no_grad():  # importances equal across tasks but varying over connections
        for n in d.layer_names:
            v = torch.rand(d.importance[d._key('a', n)].shape) + 0.1
            for t in d.tasks:
                d.importance[d._key(t, n)].copy_(v)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    deltas = fake_passes(d, model)
    d.fuse(model, endless(), meta_iters=0, ema=False)
    for n, p in model.named_parameters():
        if n.startswith('tasks.'):
            own = n.split('.')[1]  # a task's own parameters: the end of its own pass
            torch.testing.assert_close(p.detach(), start[n] + deltas[own][n])
        else:
            torch.testing.assert_close(p.detach(), start[n] + (deltas['a'][n] + deltas['b'][n]) / 2, msg=n)


def test_fusion_weights_each_connection_by_importance_times_coefficient(toy):
    from projects.allinone.engine.drmgf import DRMGF
    model = build(toy)
    d = DRMGF(model)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for k in d.importance:
            d.importance[k].copy_(torch.rand(d.importance[k].shape, generator=g) + 0.05)
            d.alpha[k].copy_(torch.rand(d.alpha[k].shape, generator=g) + 0.05)
    w0 = model.backbone.conv.weight.detach().clone()
    deltas = fake_passes(d, model)
    d.fuse(model, endless(), meta_iters=0, ema=False)
    # independent formula: pi_t[o, i] = |v_t[o, i]| / sum_i' |v_t[o, i']| * |alpha_t[o, i]|
    pis = {}
    for t in ('a', 'b'):
        v, a = d.importance[d._key(t, 'backbone.conv')].detach(), d.alpha[d._key(t, 'backbone.conv')].detach()
        pis[t] = (v / v.sum(1, keepdim=True) * a)[:, :, None, None]
    want = w0 + (pis['a'] * deltas['a']['backbone.conv.weight'] + pis['b'] * deltas['b']['backbone.conv.weight']) \
        / (pis['a'] + pis['b'])
    torch.testing.assert_close(model.backbone.conv.weight.detach(), want)
    # BN statistics: the equal mixture of the two passes' (both untouched here: unchanged)
    assert torch.equal(model.backbone.bn.running_var, torch.ones(4))


def test_bn_statistics_are_the_mixture_of_the_passes(toy):
    from projects.allinone.engine.drmgf import DRMGF
    model = build(toy)
    d = DRMGF(model)
    d.begin_round(model)
    stats = {'a': (torch.tensor([0., 1, 2, 3]), torch.tensor([1., 1, 4, 2])),
             'b': (torch.tensor([2., 1, 0, 3]), torch.tensor([3., 1, 2, 2]))}
    for t, (m, v) in stats.items():
        d.restore_start(model)
        model.backbone.bn.running_mean.copy_(m)
        model.backbone.bn.running_var.copy_(v)
        d.end_pass(model, t, gated=False)
    d.fuse(model, endless(), meta_iters=0, ema=False)
    ma, va = stats['a']
    mb, vb = stats['b']
    mean = (ma + mb) / 2
    torch.testing.assert_close(model.backbone.bn.running_mean, mean)
    torch.testing.assert_close(model.backbone.bn.running_var, (va + ma ** 2 + vb + mb ** 2) / 2 - mean ** 2)


def test_meta_learning_moves_the_coefficients_towards_the_better_update(toy):
    """Pass 'a' improves both losses, pass 'b' is noise: alpha must favour 'a' on the shared layers."""
    from projects.allinone.engine.drmgf import DRMGF
    model = build(toy)
    wrapper = wrapper_for(model, lr=0.05)
    d = DRMGF(model)
    model.train()
    data = endless()
    d.begin_round(model)
    for _ in range(15):
        with d.task_pass(model, 'a', gated=False):
            model.train_step(next(data), wrapper)
    d.end_pass(model, 'a', gated=False)
    d.restore_start(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    d.end_pass(model, 'b', gated=False)
    stats = d.fuse(model, data, meta_iters=10, ema=False)
    assert stats['meta_loss'] == stats['meta_loss']  # a number
    for n in d.layer_names:
        a, b = d.alpha[d._key('a', n)].detach(), d.alpha[d._key('b', n)].detach()
        assert a.mean() > b.mean(), n


@pytest.mark.parametrize('aggregator', [dict(type='SumAggregator'), dict(type='PCGradAggregator')])
def test_a_pass_weights_the_other_tasks_at_aux_weight_through_any_aggregator(toy, aggregator):
    """In task a's pass b's loss enters the optim wrapper at 0.5: its shared gradient norm is half of
    what it is in b's own pass from the same weights and batch (with the config's aggregator)."""
    from projects.allinone.engine.drmgf import DRMGF
    from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper
    model = build(toy)
    wrapper = MultiTaskOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.05), aggregator=aggregator)
    d = DRMGF(model)
    model.train()
    d.begin_round(model)
    norms = {}
    for t in ('a', 'b'):
        d.restore_start(model)
        with d.task_pass(model, t, gated=True):
            model.train_step(batches(0), wrapper)
        norms[t] = dict(wrapper.last_stats)
    assert model.task_loss_weights == {'a': 1.0, 'b': 1.0}  # restored after the pass
    assert norms['a']['b.grad_norm'] == pytest.approx(0.5 * norms['b']['b.grad_norm'], rel=1e-3)
    assert norms['b']['a.grad_norm'] == pytest.approx(0.5 * norms['a']['a.grad_norm'], rel=1e-3)


# ---------------------------------------------------------------------- gated forward
def test_gated_forward_trains_the_importances_only_while_gating(toy):
    from projects.allinone.engine.drmgf import DRMGF
    model = build(toy)
    d = DRMGF(model)
    model.train()
    b = batches(0)
    with torch.no_grad():
        plain = model.task_loss('a', b['a'])[0]
    # at the start the gate is the slice norm (up to the LRN factor): the gated loss ~ the plain one
    with d.task_pass(model, 'a', gated=True):
        gated = model.task_loss('a', b['a'])[0]
    assert float(gated) == pytest.approx(float(plain), rel=1e-2)
    gated.backward()
    key_a, key_b = d._key('a', 'backbone.conv'), d._key('b', 'backbone.conv')
    ga, gb = d.importance[key_a].grad, d.importance[key_b].grad
    assert ga is not None and gb is not None
    # the dominant task's importance carries own_gate (10) times the other's share of the gate
    torch.testing.assert_close(ga, 10 * gb, rtol=1e-3, atol=1e-8)
    assert isinstance(model.backbone.conv.weight, nn.Parameter)  # the parameter is back after the forward
    d.importance_optimizer.zero_grad()
    with d.task_pass(model, 'a', gated=False):
        model.task_loss('a', b['a'])[0].backward()
    assert d.importance[key_a].grad is None  # no gate, no importance gradient
    model.eval()
    with torch.no_grad():
        plain = model.test_step({'a': b['a']})
        with d.task_pass(model, 'a', gated=True):  # inference: the plain network
            assert torch.equal(model.test_step({'a': b['a']}), plain)


def test_importance_ranking_moves_towards_the_task_that_uses_a_filter(toy):
    """Task a reads only the first 4 of the 8 output filters of the shared linear layer, b reads all;
    both losses want the magnitude of what they read larger. With the gated forward (the dominant
    task's importance 10x in the gate) only the importances learn (model lr 0): b's share of filters
    4-7 must rise above one half, while filters 0-3, read by both, stay shared.

    The importances use SGD here: with the official Adam the per-element normalisation cancels the
    10:1 factor for gradients of one sign, and the shares barely move (see the README)."""
    from projects.allinone.engine.drmgf import DRMGF
    cfg = copy.deepcopy(toy)
    cfg['tasks']['a'].update(used=4, grow=True)
    cfg['tasks']['b'].update(grow=True)
    model = build(cfg)
    wrapper = wrapper_for(model, lr=0.0)
    d = DRMGF(model, importance_optim=dict(type='SGD', lr=1.0))
    model.train()
    data = endless()

    def share_b():
        va = d.importance[d._key('a', 'backbone.fc')].detach().abs().squeeze(1)
        vb = d.importance[d._key('b', 'backbone.fc')].detach().abs().squeeze(1)
        return vb / (va + vb)

    assert torch.allclose(share_b(), torch.full((8, ), 0.5))
    for _ in range(3):  # rounds
        d.begin_round(model)
        for t in ('b', 'a'):
            d.restore_start(model)
            for _ in range(10):
                with d.task_pass(model, t, gated=True):
                    model.train_step(next(data), wrapper)
                d.step_importances()
            d.end_pass(model, t, gated=True)
        d.fuse(model, data, meta_iters=0, ema=False)
    s = share_b()
    assert s[4:].min() > 0.52, s
    assert s[4:].mean() > s[:4].mean() + 0.1, s
    assert (s[:4] - 0.5).abs().max() < 0.1, s


# ---------------------------------------------------------------------- the loop on the demo
def drmgf_cfg(demo_cfg, max_iters=8):
    cfg = copy.deepcopy(demo_cfg)
    cfg.randomness = dict(seed=0, deterministic=True)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.train_cfg = dict(type='DRMGFTrainLoop', max_iters=max_iters, round_iters=1, meta_iters=1, gate_until=0.5,
                         drmgf=dict(layers=['backbone.layer4']))
    cfg.default_hooks.checkpoint.interval = 2
    cfg.default_hooks.checkpoint.max_keep_ckpts = -1
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=max_iters)]
    return cfg


@pytest.mark.slow
def test_loop_resumed_inside_a_round_matches_the_uninterrupted_run_and_freezes(registered, demo_cfg):
    """8 iterations, T = 3 passes of 1 iteration: rounds at 0, 3 (gated) and 6 (2 passes, frozen).
    A resume from iteration 4 (inside the second round) ends with the same weights; the importances
    stop changing once the gates are off (iterations 6 to 8)."""
    from mmengine.runner import Runner
    cfg = drmgf_cfg(demo_cfg)
    full = copy.deepcopy(cfg)
    full.experiment_name = 'full'
    runner = Runner.from_cfg(full)
    runner.train()
    assert runner.iter == 8
    want = {k: v.clone() for k, v in runner.model.state_dict().items()}
    scalars = runner.message_hub.log_scalars
    assert 'train/drmgf.meta_loss' in scalars and 'train/drmgf.det.importance_share' in scalars

    ck = {i: torch.load(osp.join(cfg.work_dir, f'iter_{i}.pth'), weights_only=True) for i in (4, 6, 8)}
    assert ck[4]['drmgf']['start'] is not None and list(ck[4]['drmgf']['pass_ends']) == ['cls']
    imp = {i: ck[i]['drmgf']['importance'] for i in ck}
    assert any(not torch.equal(imp[4][k], imp[6][k]) for k in imp[4])  # learning while gated
    assert all(torch.equal(imp[6][k], imp[8][k]) for k in imp[6])      # frozen after the gates
    assert any(not torch.equal(ck[6]['drmgf']['alpha'][k], ck[8]['drmgf']['alpha'][k]) for k in imp[6])

    resumed = copy.deepcopy(cfg)
    resumed.work_dir = cfg.work_dir + '_resumed'
    resumed.resume, resumed.load_from = True, osp.join(cfg.work_dir, 'iter_4.pth')
    resumed.experiment_name = 'resumed'
    runner = Runner.from_cfg(resumed)
    runner.train()
    got = runner.model.state_dict()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)
