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

    def __init__(self, used=8, seed=0, grow=False, conv_head=False, backbone=None, data_preprocessor=None,
                 init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.head = nn.Linear(8, 1)
        self.proj = nn.Conv2d(8, 8, 1) if conv_head else None  # a conv of the task's own branch
        mask = torch.zeros(8)
        mask[:used] = 1
        self.register_buffer('mask', mask, persistent=False)
        self.teacher = torch.randn(8, generator=torch.Generator().manual_seed(seed)) * 3
        self.grow = grow

    def _own(self, feats):
        f = feats[0]
        if self.proj is not None:
            f = self.proj(f[:, :, None, None]).flatten(1)
        return f * self.mask

    def loss(self, feats, data_samples=None):
        f = self._own(feats)
        if self.grow:
            return dict(loss=(f.abs().sum(-1) - 20).square().mean() / 100 + 0 * self.head.weight.sum())
        target = (f.detach().sign() * self.teacher * self.mask).sum(-1, keepdim=True)
        return dict(loss=(self.head(f) - target).square().mean())

    def predict(self, feats, data_samples=None):
        return self.head(self._own(feats))



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
    from projects.allinone.routing.drmgf import DRMGF
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
    from projects.allinone.routing.drmgf import DRMGF
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
    from projects.allinone.routing.drmgf import DRMGF
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
    from projects.allinone.routing.drmgf import DRMGF
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


def test_meta_learning_moves_the_fusion_shares_towards_the_better_update(toy):
    """Pass 'a' lowers both losses (both want larger features), pass 'b' is its opposite (D_b = -D_a): the
    fusion share of 'a', |alpha_a| / (|alpha_a| + |alpha_b|) (the fusion uses |alpha|), must rise well
    above one half on every shared layer and norm, and the fused weights must beat the equal fusion.

    alpha starts at 1 here: from the official 1e-3 Adam's first steps of 0.1 flip the sign of the
    coefficient that should shrink, and its momentum then grows |alpha| for both tasks alike, so the
    shares move slowly (on this toy 0.52 after 10 meta batches, about 0.65 after 100; docs/routing.md)."""
    from projects.allinone.routing.drmgf import DRMGF
    cfg = copy.deepcopy(toy)
    for t in ('a', 'b'):
        cfg['tasks'][t]['grow'] = True
    model = build(cfg)
    wrapper = wrapper_for(model, lr=0.05)
    d = DRMGF(model, alpha_init=1.0)
    model.train()
    data = endless()
    held_out = batches(999)

    def total_loss():
        with torch.no_grad():
            return sum(float(model.task_loss(t, b)[0]) for t, b in held_out.items())

    d.begin_round(model)
    w0 = {n: p.detach().clone() for n, p in model.backbone.named_parameters(prefix='backbone')}
    before = total_loss()
    for _ in range(15):
        with d.task_pass(model, 'a', gated=False):
            model.train_step(next(data), wrapper)
    assert total_loss() < 0.6 * before
    d.end_pass(model, 'a', gated=False)
    d.restore_start(model)
    with torch.no_grad():
        for n, p in model.backbone.named_parameters(prefix='backbone'):
            p.copy_(w0[n] - d.pass_ends['a'][n])
    d.end_pass(model, 'b', gated=False)
    d.fuse(model, data, meta_iters=10, ema=False)
    for n in d.layer_names + list(d.norm_keys):
        a, b = d.alpha[d._key('a', n)].detach().abs(), d.alpha[d._key('b', n)].detach().abs()
        assert (a / (a + b)).mean() > 0.7, n
    assert total_loss() < 0.8 * before  # the equal fusion is W0 here: before


def recorded_round(toy, seed=0, meta_seed=500, **kw):
    """A model and DR-MGF with random importances / coefficients and two fake passes recorded."""
    from projects.allinone.routing.drmgf import DRMGF
    model = build(toy)
    d = DRMGF(model, **kw)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for k in d.importance:
            d.importance[k].copy_(torch.rand(d.importance[k].shape, generator=g) + 0.05)
        for k in d.alpha:
            d.alpha[k].copy_(torch.rand(d.alpha[k].shape, generator=g) + 0.05)
    model.train()
    return model, d, fake_passes(d, model, seed=seed)


def test_meta_loss_is_the_sum_of_the_task_losses_at_the_fused_weights(toy):
    """One meta batch: the reported meta loss is sum_t L_t at W0 + sum_t pi_t D_t / sum_t pi_t (with the
    coefficients before the meta step), rebuilt here on a copy of the model by hand."""
    model, d, deltas = recorded_round(toy)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n in start:  # fake_passes leaves the last pass's weights: back to W0
        start[n] -= deltas['b'][n]
    pis = {n: [v.detach() for v in d.fusion_coefficients(n, ['a', 'b'])] for n in d.layer_names}
    norm_alpha = {k: [d.alpha[d._key(t, k)].detach().abs() for t in ('a', 'b')] for k in d.norm_keys}
    by_hand = copy.deepcopy(model)  # (d's hooks come along, idle: d is in no pass or fusion)
    with torch.no_grad():
        for n, p in by_hand.named_parameters():
            da, db = deltas['a'][n], deltas['b'][n]
            if n.endswith('.weight') and n[:-len('.weight')] in pis:
                pa, pb = pis[n[:-len('.weight')]]
                pa, pb = pa.reshape(pa.shape + (1, ) * (p.dim() - 2)), pb.reshape(pb.shape + (1, ) * (p.dim() - 2))
                p.copy_(start[n] + (pa * da + pb * db) / (pa + pb))
            elif n in norm_alpha:
                ca, cb = norm_alpha[n]
                p.copy_(start[n] + (ca * da + cb * db) / (ca + cb))
            elif n.startswith('tasks.'):
                own = n.split('.')[1]
                p.copy_(start[n] + deltas[own][n])
            else:
                p.copy_(start[n] + (da + db) / 2)
    meta = batches(77)
    want = sum(float(by_hand.task_loss(t, b)[0]) for t, b in meta.items())
    model2, d2, _ = recorded_round(toy)
    stats = d2.fuse(model2, iter([meta]), meta_iters=1, ema=False)
    assert stats['meta_loss'] == pytest.approx(want, rel=1e-5)
    # and the coefficients moved (Adam, lr 0.1: by about 0.1 each)
    assert any((d2.alpha[k] - d.alpha[k]).abs().max() > 0.05 for k in d.alpha)


@pytest.mark.parametrize('before', [False, True])
def test_the_ema_smooths_alpha_after_the_fusion(toy, before):
    """Official order (default): the fused weights are those of the meta-learned alpha (as with no EMA),
    and afterwards alpha = 0.9 alpha_round_start + 0.1 alpha_meta, the next round's start.
    ``ema_before_fusion=True``: the fused weights are those of the smoothed alpha."""
    kw = dict(ema_before_fusion=before)
    m0, d0, _ = recorded_round(toy, **kw)  # reference: the same round without the EMA
    alpha_start = {k: v.detach().clone() for k, v in d0.alpha.items()}
    d0.fuse(m0, endless(), meta_iters=3, ema=False)
    alpha_meta = {k: v.detach().clone() for k, v in d0.alpha.items()}
    m1, d1, deltas = recorded_round(toy, **kw)
    d1.fuse(m1, endless(), meta_iters=3, ema=True)
    for k in alpha_meta:
        assert not torch.allclose(alpha_meta[k], alpha_start[k])
        torch.testing.assert_close(d1.alpha[k].detach(), 0.9 * alpha_start[k] + 0.1 * alpha_meta[k], msg=k)
    w_meta = m0.backbone.conv.weight.detach()
    w = m1.backbone.conv.weight.detach()
    if not before:
        torch.testing.assert_close(w, w_meta)
        torch.testing.assert_close(m1.backbone.bn.weight.detach(), m0.backbone.bn.weight.detach())
    else:  # by hand, with the smoothed alpha
        assert not torch.allclose(w, w_meta)
        m2, d2, _ = recorded_round(toy, **kw)
        w0 = m2.backbone.conv.weight.detach() - deltas['b']['backbone.conv.weight']
        pis = []
        for t in ('a', 'b'):
            v = d2.importance[d2._key(t, 'backbone.conv')].detach()
            a = d1.alpha[d1._key(t, 'backbone.conv')].detach().abs()
            pis.append((v / v.sum(1, keepdim=True) * a)[:, :, None, None])
        want = w0 + (pis[0] * deltas['a']['backbone.conv.weight'] + pis[1] * deltas['b']['backbone.conv.weight']) \
            / (pis[0] + pis[1])
        torch.testing.assert_close(w, want)


def test_shared_norms_are_fused_by_their_own_coefficients(toy):
    """norm_fusion='meta' (official): BN weight and bias per channel W0 + sum_t |a_t| D_t / sum_t |a_t|, and
    the meta batches train those coefficients; 'equal': the mean update."""
    model, d, deltas = recorded_round(toy)
    assert list(d.norm_keys) == ['backbone.bn.weight', 'backbone.bn.bias'] and d.norm_names == ['backbone.bn']
    w0 = {n: model.backbone.bn._parameters[n].detach() - deltas['b'][f'backbone.bn.{n}'] for n in ('weight', 'bias')}
    coef = {n: [d.alpha[d._key(t, f'backbone.bn.{n}')].detach().abs() for t in ('a', 'b')] for n in w0}
    d.fuse(model, endless(), meta_iters=0, ema=False)
    for n in w0:
        (ca, cb), key = coef[n], f'backbone.bn.{n}'
        want = w0[n] + (ca * deltas['a'][key] + cb * deltas['b'][key]) / (ca + cb)
        torch.testing.assert_close(model.backbone.bn._parameters[n].detach(), want, msg=n)
        assert not torch.allclose(want, w0[n] + (deltas['a'][key] + deltas['b'][key]) / 2)
    model, d, deltas = recorded_round(toy)
    before = {k: d.alpha[k].detach().clone() for k in d.alpha if k.endswith(':weight') or k.endswith(':bias')}
    assert len(before) == 4
    d.fuse(model, endless(), meta_iters=1, ema=False)
    assert all(not torch.equal(d.alpha[k], v) for k, v in before.items())  # reached by the meta loss
    model, d, deltas = recorded_round(toy, norm_fusion='equal')
    assert not d.norm_keys and not any(k.endswith(':weight') for k in d.alpha)
    w0 = model.backbone.bn.weight.detach() - deltas['b']['backbone.bn.weight']
    d.fuse(model, endless(), meta_iters=0, ema=False)
    torch.testing.assert_close(model.backbone.bn.weight.detach(),
                               w0 + (deltas['a']['backbone.bn.weight'] + deltas['b']['backbone.bn.weight']) / 2)


def lrn_gate(vs, dominant, own=10.0, beta=1e-4, power=0.75):
    """The gate by hand: sum_u c_u |v_u| / (1 + beta sum_in |v_u|)^power / sum_u c_u."""
    num = sum((own if t == dominant else 1.0) * v.abs() / (1 + beta * v.abs().sum(1, keepdim=True)) ** power
              for t, v in vs.items())
    return num / sum(own if t == dominant else 1.0 for t in vs)


def test_a_gated_pass_records_the_delta_of_its_gated_weights(toy):
    """A pass with the gate on: its delta is W_end / ||slice|| * gate_d(v at the end) - W0 (per connection of
    the conv, per row of the linear layer), and the fusion combines exactly those deltas."""
    from projects.allinone.routing.drmgf import DRMGF
    model = build(toy)
    wrapper = wrapper_for(model, lr=0.05)
    d = DRMGF(model, importance_optim=dict(type='SGD', lr=0.5))
    model.train()
    data = endless()
    d.begin_round(model)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    v0 = {k: v.detach().clone() for k, v in d.importance.items()}
    deltas = {}
    for t in ('a', 'b'):
        d.restore_start(model)
        for _ in range(3):
            with d.task_pass(model, t, gated=True):
                model.train_step(next(data), wrapper)
            d.step_importances()
        d.end_pass(model, t, gated=True)
        deltas[t] = {}
        for layer in ('backbone.conv', 'backbone.fc'):
            w = dict(model.named_parameters())[f'{layer}.weight'].detach()
            vs = {u: d.importance[d._key(u, layer)].detach() for u in ('a', 'b')}
            gate = lrn_gate(vs, t)
            norm = w.flatten(2).norm(dim=2) if w.dim() == 4 else w.norm(dim=1, keepdim=True)
            shape = gate.shape + (1, ) * (w.dim() - gate.dim())
            want = w / norm.reshape(shape) * gate.reshape(shape) - w0[f'{layer}.weight']
            torch.testing.assert_close(d.pass_ends[t][f'{layer}.weight'], want, msg=(t, layer))
            assert not torch.allclose(want, w - w0[f'{layer}.weight'])  # the gate is not the identity here
            deltas[t][layer] = want
    assert all(not torch.allclose(v, v0[k]) for k, v in d.importance.items())  # the importances learned
    d.fuse(model, endless(), meta_iters=0, ema=False)
    pis = []
    for t in ('a', 'b'):
        v, a = d.importance[d._key(t, 'backbone.conv')].detach(), d.alpha[d._key(t, 'backbone.conv')].detach()
        pis.append((v / v.sum(1, keepdim=True) * a.abs())[:, :, None, None])
    da, db = deltas['a']['backbone.conv'], deltas['b']['backbone.conv']
    want = w0['backbone.conv.weight'] + (pis[0] * da + pis[1] * db) / (pis[0] + pis[1])
    torch.testing.assert_close(model.backbone.conv.weight.detach(), want)


def test_task_convs_are_rescaled_at_the_pass_end_or_gated(toy):
    """A conv of task a's own branch. 'rescale' (official): the forward stays plain (no importance
    gradient), and task a's gated pass records it as unit-norm slices times |v_a| / (1 + beta sum_in
    |v_a|)^0.75 with v_a its slice norms at the start, which the fusion writes back. 'gate': it runs with
    that weight in every pass's forward (whichever task dominates) and v_a learns. None: plain."""
    from projects.allinone.routing.drmgf import DRMGF
    cfg = copy.deepcopy(toy)
    cfg['tasks']['a']['conv_head'] = True
    b = batches(3)['a']

    def gated_weight(d, conv):
        v = d.importance[d._key('a', 'tasks.a.proj')].detach()
        gate = (v / (1 + 1e-4 * v.sum(1, keepdim=True)) ** 0.75)[:, :, None, None]
        return conv.weight.detach() / conv.weight.detach().flatten(2).norm(dim=2)[:, :, None, None] * gate

    # rescale (default)
    model = build(cfg)
    d = DRMGF(model)
    assert d.task_convs == 'rescale' and dict(d.task_layers) == {'tasks.a.proj': 'a'}
    key = d._key('a', 'tasks.a.proj')
    assert key in d.importance and d._key('b', 'tasks.a.proj') not in d.importance and key not in d.alpha
    conv = model.tasks.a.proj
    v0 = d.importance[key].detach().clone()
    torch.testing.assert_close(v0, conv.weight.detach().flatten(2).norm(dim=2))
    model.train()
    plain_model = build(cfg)
    plain = DRMGF(plain_model, task_convs=None)  # the same model, its own convs left alone
    assert not plain.task_layers and plain.layer_names == d.layer_names
    plain_model.train()
    with plain.task_pass(plain_model, 'a', gated=True):
        want = plain_model.task_loss('a', b)[0]
    d.begin_round(model)
    with d.task_pass(model, 'a', gated=True):
        loss = model.task_loss('a', b)[0]
    assert torch.equal(loss, want)  # the forward does not use the task conv's gate
    loss.backward()
    assert d.importance[key].grad is None
    with torch.no_grad():
        conv.weight.mul_(torch.linspace(0.5, 2.0, 8)[:, None, None, None])  # the pass changed the slice norms
    want = gated_weight(d, conv)
    torch.testing.assert_close(want.flatten(2).norm(dim=2), v0 / (1 + 1e-4 * v0.sum(1, keepdim=True)) ** 0.75)
    d.end_pass(model, 'a', gated=True)
    torch.testing.assert_close(d.pass_ends['a']['tasks.a.proj.weight'], want)
    d.restore_start(model)
    d.end_pass(model, 'b', gated=True)
    d.fuse(model, endless(), meta_iters=0, ema=False)
    torch.testing.assert_close(conv.weight.detach(), want)  # the end of its own task's pass, rescaled
    # gate
    model = build(cfg)
    d = DRMGF(model, task_convs='gate')
    conv = model.tasks.a.proj
    with torch.no_grad():
        d.importance[key].mul_(torch.linspace(0.5, 2.0, 8)[:, None])  # a gate far from the slice norms
    w_eff = gated_weight(d, conv)
    model.train()
    with torch.no_grad():  # the plain-task-conv model (same weights and shared importances) with w_eff in it
        plain_model.tasks.a.proj.weight.copy_(w_eff)
    for dominant in ('a', 'b'):
        with torch.no_grad(), plain.task_pass(plain_model, dominant, gated=True):
            want = plain_model.task_loss('a', b)[0]
        with d.task_pass(model, dominant, gated=True):
            loss = model.task_loss('a', b)[0]
        assert float(loss) == pytest.approx(float(want), rel=1e-6), dominant  # (a's loss at 0.5 in b's pass)
        d.importance_optimizer.zero_grad()
        loss.backward()
        assert d.importance[key].grad is not None and d.importance[key].grad.abs().sum() > 0
    with torch.no_grad():
        assert float(model.task_loss('a', b)[0]) != pytest.approx(float(want), rel=1e-3)  # outside a pass: plain


def test_buffers_run_on_between_the_passes_unless_reset(toy):
    """Official: only the parameters go back to W0 between passes, so pass b starts with the BN statistics
    pass a ended with; reset_buffers=True starts every pass from W0's."""
    from projects.allinone.routing.drmgf import DRMGF
    for reset in (False, True):
        model = build(toy)
        d = DRMGF(model, reset_buffers=reset)
        d.begin_round(model)
        w0 = model.backbone.conv.weight.detach().clone()
        with torch.no_grad():
            model.backbone.bn.running_mean.fill_(3.0)
            model.backbone.conv.weight.add_(1.0)
        d.end_pass(model, 'a', gated=False)
        d.restore_start(model)
        assert torch.equal(model.backbone.conv.weight, w0)
        want = torch.zeros(4) if reset else torch.full((4, ), 3.0)
        assert torch.equal(model.backbone.bn.running_mean, want), reset


def test_importance_and_coefficient_learning_rates_halve_at_the_milestone(toy):
    from projects.allinone.routing.drmgf import DRMGF
    model = build(toy)
    d = DRMGF(model)
    assert d.set_progress(0.49) == 1.0
    assert [g['lr'] for g in d.fusion_optimizer.param_groups] == [0.1]
    assert [g['lr'] for g in d.importance_optimizer.param_groups] == [1e-4]
    assert d.set_progress(0.5) == 0.5
    assert [g['lr'] for g in d.fusion_optimizer.param_groups] == [0.05]
    assert [g['lr'] for g in d.importance_optimizer.param_groups] == [5e-5]
    d = DRMGF(model, lr_milestones=(0.25, 0.75), lr_gamma=0.1)
    assert d.set_progress(0.8) == pytest.approx(0.01)
    assert d.fusion_optimizer.param_groups[0]['lr'] == pytest.approx(1e-3)
    assert DRMGF(model, lr_milestones=()).set_progress(1.0) == 1.0


@pytest.mark.parametrize('aggregator', [dict(type='SumAggregator'), dict(type='PCGradAggregator')])
def test_a_pass_weights_the_other_tasks_at_aux_weight_through_any_aggregator(toy, aggregator):
    """In task a's pass b's loss enters the optim wrapper at 0.5: its shared gradient norm is half of
    what it is in b's own pass from the same weights and batch (with the config's aggregator)."""
    from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper
    from projects.allinone.routing.drmgf import DRMGF
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
    from projects.allinone.routing.drmgf import DRMGF
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
    10:1 factor for gradients of one sign, and the shares barely move (see docs/routing.md)."""
    from projects.allinone.routing.drmgf import DRMGF
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
    # passes in task order (the official run script); rounds at 0 and 3 at the base lr, 6 (>= half) halved
    assert ck[4]['drmgf']['start'] is not None and list(ck[4]['drmgf']['pass_ends']) == ['det']
    assert ck[4]['drmgf']['fusion_optimizer']['param_groups'][0]['lr'] == 0.1
    assert ck[8]['drmgf']['fusion_optimizer']['param_groups'][0]['lr'] == 0.05
    assert any(k.startswith('tasks.seg.') for k in ck[4]['drmgf']['task_layers'])  # the heads' convs are rescaled
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


class HalvingSync:
    """A stand-in for the data-parallel sync seam (``GradSync.average``): the "other rank" has zero
    gradients, so the average halves each one; records what it was given."""

    def __init__(self):
        self.calls = []

    def average(self, params):
        params = list(params)
        self.calls.append([id(p) for p in params])
        for p in params:
            if p.grad is not None:
                p.grad.mul_(0.5)


def test_importance_and_coefficient_steps_average_their_gradients_through_the_sync_seam(toy):
    """Under data parallel every rank must take the same step of v and alpha: DR-MGF hands their
    gradients to the optim wrapper's sync before each optimizer step (here a halving stand-in: the
    step is the one of the halved gradient)."""
    from projects.allinone.routing.drmgf import DRMGF
    sgd = dict(type='SGD', lr=0.1)   # not Adam, which is blind to the gradient's scale
    model = build(toy)
    d = DRMGF(model, importance_optim=sgd)
    model.train()
    with d.task_pass(model, 'a', gated=True):
        model.task_loss('a', batches(0)['a'])[0].backward()
    before = {k: v.detach().clone() for k, v in d.importance.items()}
    grads = {k: None if v.grad is None else v.grad.clone() for k, v in d.importance.items()}
    sync = HalvingSync()
    d.step_importances(sync)
    assert sync.calls == [[id(v) for v in d.importance.values()]]
    for k, v in d.importance.items():            # SGD on the halved gradients
        want = before[k] if grads[k] is None else before[k] - 0.1 * 0.5 * grads[k]
        torch.testing.assert_close(v.detach(), want, rtol=0, atol=1e-7)
    assert any(g is not None and g.abs().max() > 0 for g in grads.values())

    model, d, _ = recorded_round(toy)
    sync = HalvingSync()
    d.fuse(model, endless(), meta_iters=2, ema=False, sync=sync)
    assert sync.calls == [[id(a) for a in d.alpha.values()]] * 2
