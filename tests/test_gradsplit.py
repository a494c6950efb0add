"""GradSplit: the backward of each task reaches only the channel groups it may train; the forward,
inference and the all-ones relation are the plain network."""
import copy
import json

import pytest
import torch
from mmengine.config import Config
from torch import nn

from conftest import DEMO_CFG

TASKS = ['det', 'seg', 'cls']
SPLIT = 'layer4.1'  # the last block of the split stage: its conv2 / bn2 filters make the output channels
# what the default split (every block of layer4) routes: each block's last conv + norm, and the downsample
ROUTED = [f'backbone.layer4.{b}.{p}' for b, ps in (
    (0, ['conv2.weight', 'bn2.weight', 'bn2.bias', 'downsample.0.weight', 'downsample.1.weight',
         'downsample.1.bias']),
    (1, ['conv2.weight', 'bn2.weight', 'bn2.bias'])) for p in ps]


@pytest.fixture(scope='module')
def model_cfg():
    return Config.fromfile(DEMO_CFG).model


def build(cfg, **extra):
    from projects.allinone.registry import MODELS
    cfg = copy.deepcopy(cfg)
    cfg.update(extra)
    torch.manual_seed(0)
    return MODELS.build(cfg)


def batch_of(cfg, task, n=2):
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DATASETS
    ds = DATASETS.build(copy.deepcopy(cfg.train_dataloader[task].dataset))
    return pseudo_collate([ds[i] for i in range(n)])


@pytest.fixture(scope='module')
def batches(registered, demo_data):
    from conftest import retarget
    cfg = Config.fromfile(DEMO_CFG)
    cfg.train_dataloader = retarget(copy.deepcopy(cfg.train_dataloader), 'data/demo/', demo_data.rstrip('/') + '/')
    torch.manual_seed(0)
    return {t: batch_of(cfg, t) for t in TASKS}


def task_grads(model, task, batch):
    """Shared-parameter gradients of ``task``'s loss alone (fixed RNG for the heads' dropout)."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    loss, _ = model.task_loss(task, copy.deepcopy(batch))
    loss.backward()
    grads = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
             for n, p in model.shared_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def filter_rows(grads):
    """Per output channel of the split stage: conv2 filter weights and bn2 weight/bias of its last block."""
    conv = grads[f'backbone.{SPLIT}.conv2.weight']
    bn = f'backbone.{SPLIT}.bn2'
    return [conv.flatten(1), grads[f'{bn}.weight'][:, None], grads[f'{bn}.bias'][:, None]]


@pytest.fixture(scope='module')
def plain_and_identity(registered, model_cfg, batches):
    plain = build(model_cfg)
    split = build(model_cfg, grad_split=dict())  # defaults: every block of layer4, identity relation
    out = {}
    for task in TASKS:
        out[task] = (task_grads(plain, task, batches[task]), task_grads(split, task, batches[task]))
    return plain, split, out


def test_defaults_and_no_state(plain_and_identity):
    plain, split, _ = plain_and_identity
    gs = split.routing['grad_split']
    assert list(gs.split_modules) == ['backbone.layer4.0', 'backbone.layer4.1']
    assert torch.equal(gs.relation, torch.eye(3, dtype=torch.bool))
    assert gs.group_bounds(256) == [(0, 85), (85, 171), (171, 256)]
    # no parameters, no state-dict keys: a plain checkpoint loads strictly either way
    assert split.state_dict().keys() == plain.state_dict().keys()
    split.load_state_dict(plain.state_dict(), strict=True)


def test_forward_values_are_bit_identical(plain_and_identity, batches):
    plain, split, grads = plain_and_identity
    for task in TASKS:
        (loss_p, _), (loss_s, _) = grads[task]
        assert torch.equal(loss_p, loss_s), task
        model_t = split.tasks[task]
        data = model_t.data_preprocessor(copy.deepcopy(batches[task]), True)
        plain.train(), split.train()
        with plain.task_context.running(task, train=True):
            fp = plain.extract_feat(data['inputs'])
        with split.task_context.running(task, train=True):
            fs = split.extract_feat(data['inputs'])
        assert type(fs[-1].grad_fn).__name__.startswith('Where')  # routed, same values
        for a, b in zip(fp, fs):
            assert torch.equal(a, b), task


def test_every_routed_parameter_of_the_default_gets_no_gradient_from_other_tasks(plain_and_identity):
    """For every parameter the default split routes (each layer4 block's last conv + norm and the
    downsample), the rows of another task's group get exactly zero gradient from a task, where joint
    training gives them one; the routed share of the shared parameters is what is printed at start."""
    from projects.allinone.routing.gradsplit.router import routed_parameters
    plain, split, grads = plain_and_identity
    routed, unknown = routed_parameters(split.routing['grad_split'], split)
    assert sorted(routed) == sorted(ROUTED) and not unknown
    numel = {n: p.numel() for n, p in split.shared_parameters()}
    report = split.routing['grad_split'].report(split)
    assert report['routed'] == sum(numel[n] for n in ROUTED) == 1_213_952
    assert report['share'] == pytest.approx(report['routed'] / sum(numel.values())) and report['share'] > 0.4
    bounds = split.routing['grad_split'].group_bounds(256)
    for u, task in enumerate(TASKS):
        (_, g_plain), (_, g_split) = grads[task]
        for name in ROUTED:
            for t, (s, e) in enumerate(bounds):
                if t == u:
                    assert torch.count_nonzero(g_split[name][s:e]) > 0, (task, name)
                else:  # another task's group: exactly zero, where joint training gives a gradient
                    assert torch.count_nonzero(g_split[name][s:e]) == 0, (task, name, t)
                    assert torch.count_nonzero(g_plain[name][s:e]) > 0, (task, name, t)
        # the last block's rows of its own group: exactly the plain gradient (nothing routed after it)
        for rp, rs in zip(filter_rows(g_plain), filter_rows(g_split)):
            s, e = bounds[u]
            assert torch.equal(rs[s:e], rp[s:e]), task
        # layers before the routed ones still learn from the task (through its own channels only)
        first = g_split['backbone.layer4.0.conv1.weight']
        assert torch.count_nonzero(first) > 0
        assert not torch.equal(first, g_plain['backbone.layer4.0.conv1.weight'])
        # stages before layer4 are not routed by a layer4 split, but get a different gradient
        assert torch.count_nonzero(g_split['backbone.layer1.0.conv1.weight']) > 0


def test_module_series_names(registered, model_cfg):
    """The stage name alone routes its output only (the last block's conv2 / bn2: about a fifth of the
    shared parameters); 'layer4.*' names every block, as the default."""
    from projects.allinone.routing.gradsplit.router import routed_parameters
    stage = build(model_cfg, grad_split=dict(modules=['backbone.layer4']))
    routed, _ = routed_parameters(stage.routing['grad_split'], stage)
    assert sorted(routed) == sorted(n for n in ROUTED if '.layer4.1.' in n)
    assert stage.routing['grad_split'].report(stage)['share'] == pytest.approx(0.21, abs=0.01)
    series = build(model_cfg, grad_split=dict(modules=['layer3.*', 'backbone.layer4.*']))
    assert list(series.routing['grad_split'].split_modules) == ['backbone.layer3.0', 'backbone.layer3.1',
                                                     'backbone.layer4.0', 'backbone.layer4.1']
    routed, unknown = routed_parameters(series.routing['grad_split'], series)
    assert set(ROUTED) < set(routed) and 'backbone.layer3.0.downsample.0.weight' in routed and not unknown


def test_all_ones_relation_equals_joint_training(registered, model_cfg, plain_and_identity, batches):
    _, _, grads = plain_and_identity
    ones = build(model_cfg, grad_split=dict(relation=[[1] * 3] * 3))
    for task in TASKS:
        (loss_p, g_plain), _ = grads[task]
        loss_o, g_ones = task_grads(ones, task, batches[task])
        assert torch.equal(loss_o, loss_p)
        for n in g_plain:
            assert torch.equal(g_ones[n], g_plain[n]), (task, n)


def test_a_relation_lets_a_task_train_other_groups(registered, model_cfg, plain_and_identity, batches, tmp_path):
    _, _, grads = plain_and_identity
    # a file written in another task order: det may also train seg's group, and nothing else changes
    path = tmp_path / 'R.json'
    path.write_text(json.dumps({'tasks': ['cls', 'seg', 'det'], 'relation': [[1, 0, 0], [0, 1, 0], [0, 1, 1]]}))
    model = build(model_cfg, grad_split=dict(modules=['layer4'], relation=str(path)))
    assert model.routing['grad_split'].relation.int().tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    _, g = task_grads(model, 'det', batches['det'])
    (_, g_plain), _ = grads['det']
    (s0, e0), (s1, e1), (s2, e2) = model.routing['grad_split'].group_bounds(256)
    for rs, rp in zip(filter_rows(g), filter_rows(g_plain)):
        assert torch.equal(rs[s0:e1], rp[s0:e1])
        assert torch.count_nonzero(rs[s2:e2]) == 0


def test_inference_is_the_plain_network(plain_and_identity, batches):
    plain, split, _ = plain_and_identity
    plain.eval(), split.eval()
    for task in ('cls', 'seg'):
        one = {k: v[:1] for k, v in batches[task].items()}  # one image: train-pipeline sizes differ
        with torch.no_grad():
            a = plain.val_step({task: copy.deepcopy(one)})
            b = split.val_step({task: copy.deepcopy(one)})
        if task == 'cls':
            assert torch.equal(a[0].pred_score, b[0].pred_score)
        else:
            assert torch.equal(a[0].seg_logits.data, b[0].seg_logits.data)
    # even with gradients on, a prediction is not routed (no task is training)
    calls = []
    split.routing['grad_split'].route = lambda *a: calls.append(a)
    try:
        split.val_step({'cls': copy.deepcopy(batches['cls'])})
    finally:
        del split.routing['grad_split'].route
    assert not calls


def test_with_a_matrix_aggregator_for_two_steps(registered, model_cfg, batches):
    from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper
    model = build(model_cfg, grad_split=dict())
    wrapper = MultiTaskOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01),
                                    aggregator=dict(type='PCGradAggregator'), stats_interval=1)
    assert not wrapper.streaming
    conv = dict(model.named_parameters())[f'backbone.{SPLIT}.conv2.weight']
    before = conv.detach().clone()
    for _ in range(2):
        logs = model.train_step({t: copy.deepcopy(b) for t, b in batches.items()}, wrapper)
        assert torch.isfinite(logs['loss'])
    assert 'cos.det-seg' in wrapper.last_stats
    assert not torch.equal(conv, before)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_relation_and_group_errors(registered, model_cfg):
    from projects.allinone.routing.gradsplit.router import GradSplit, load_relation
    with pytest.raises(ValueError, match='3 x 3'):
        load_relation([[1, 0], [0, 1]], TASKS)
    with pytest.raises(ValueError, match='0 or 1'):
        load_relation([[1, 0, 0], [0, 2, 0], [0, 0, 1]], TASKS)
    with pytest.raises(KeyError, match='unknown task'):
        load_relation({'det': ['car']}, TASKS)
    assert load_relation({'det': ['seg']}, TASKS).int().tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    with pytest.raises(KeyError, match='no module'):
        build(model_cfg, grad_split=dict(modules=['layer9']))
    with pytest.raises(ValueError, match='not in the shared'):
        build(model_cfg, grad_split=dict(modules=['tasks.cls.head.fc']))
    split = GradSplit(groups=[2, 1, 1])
    split.tasks = TASKS
    assert split.group_bounds(8) == [(0, 4), (4, 6), (6, 8)]


def test_vit_tokens_split_the_mlp_hidden_units(registered):
    """Default for a ViT: the MLP hidden units of the last quarter of the blocks, last dim of tokens."""
    from mmpretrain.models import VisionTransformer

    from projects.allinone.routing.context import TaskContext
    from projects.allinone.routing.gradsplit.router import GradSplit
    split_key = 'backbone.layers.3.ffn.layers.0'
    torch.manual_seed(0)
    holder = nn.Module()
    holder.backbone = VisionTransformer(arch=dict(embed_dims=16, num_layers=4, num_heads=2, feedforward_channels=32),
                                        img_size=16, patch_size=8)
    ctx = TaskContext()
    split = GradSplit().attach(holder, ['a', 'b'], ctx)
    assert list(split.split_modules) == ['backbone.layers.3.ffn.layers.0']
    from projects.allinone.routing.gradsplit.router import routed_parameters
    assert routed_parameters(split, holder) == ({'backbone.layers.3.ffn.layers.0.0.weight': split_key,
                                                 'backbone.layers.3.ffn.layers.0.0.bias': split_key}, [])
    heads = GradSplit(modules=['layers.3.attn.proj:input']).attach(holder, ['a', 'b'], TaskContext())
    assert routed_parameters(heads, holder) == ({}, ['backbone.layers.3.attn.proj:input'])  # not read
    heads.remove()
    fc1 = holder.backbone.layers[3].ffn.layers[0][0]
    x = torch.randn(2, 3, 16, 16)
    plain = holder.backbone(x)[0]
    with ctx.running('a', train=True):
        out = holder.backbone(x)[0]
    assert torch.equal(out, plain)
    out.square().sum().backward()
    assert torch.count_nonzero(fc1.weight.grad[16:]) == 0 and torch.count_nonzero(fc1.weight.grad[:16]) > 0
    assert torch.count_nonzero(fc1.bias.grad[16:]) == 0


# ---------------------------------------------------------------------- relation from lookahead affinity
class SplitToyBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 6)

    def forward(self, x):
        return (self.lin(x), )


def _toy_task_class():
    from mmengine.model import BaseModel

    class SplitToyTask(BaseModel):
        """Fits the shared features to ``target``: tasks with the same target help each other."""

        def __init__(self, target=1.0, weight=1.0, backbone=None, data_preprocessor=None, init_cfg=None):
            super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
            self.scale = nn.Parameter(torch.ones(()))
            self.target, self.weight = float(target), float(weight)

        def loss(self, feats, data_samples=None):
            return dict(loss=self.weight * (feats[0] * self.scale - self.target).square().mean())

        def predict(self, feats, data_samples=None):
            return feats[0] * self.scale

        def forward(self, inputs, data_samples=None, mode='tensor'):
            return self.loss(inputs) if mode == 'loss' else self.predict(inputs)

    return SplitToyTask


@pytest.fixture(scope='module')
def toy_cfg(registered):
    from mmengine.registry import MODELS as ROOT_MODELS

    from projects.allinone.registry import MODELS
    MODELS.register_module(module=SplitToyBackbone, force=True)
    ROOT_MODELS.register_module(module=_toy_task_class(), force=True)
    return dict(type='AllInOneModel', backbone=dict(type='SplitToyBackbone'),
                tasks=dict(a=dict(type='SplitToyTask', target=1.0), b=dict(type='SplitToyTask', target=1.0),
                           c=dict(type='SplitToyTask', target=-1.0)),
                grad_split=dict(modules=['backbone.lin'], relation='affinity'))


def toy_batches(i):
    g = torch.Generator().manual_seed(i)
    return {t: dict(inputs=torch.randn(8, 4, generator=g), data_samples=None) for t in 'abc'}


def test_relation_from_lookahead_affinity(toy_cfg, tmp_path):
    from types import SimpleNamespace

    from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper
    from projects.allinone.routing.gradsplit import GradSplitAffinityHook
    model = build(toy_cfg)
    with pytest.raises(RuntimeError, match='GradSplitAffinityHook'):  # 'affinity' without its hook
        model.task_loss('a', toy_batches(0)['a'])
    wrapper = MultiTaskOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.05))
    runner = SimpleNamespace(model=model, optim_wrapper=wrapper, work_dir=str(tmp_path), iter=0)
    hook = GradSplitAffinityHook(warmup_iters=4, interval=2)
    hook.before_train(runner)
    assert model.routing['grad_split'].relation.all()  # warm-up: plain joint training
    state = {k: v.clone() for k, v in model.state_dict().items()}
    Z = hook.measure(toy_batches(0), lr=0.05)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # measuring changes nothing
    assert Z[0, 1] > 0 and Z[1, 0] > 0 and Z[0, 2] < 0 and Z[2, 0] < 0 and (Z.diagonal() > 0).all()
    for i in range(4):
        runner.iter = i
        hook.before_train_iter(runner, i, toy_batches(i))
        model.train_step(toy_batches(i), wrapper)
        hook.after_train_iter(runner, i)
    saved = json.load(open(tmp_path / 'gradsplit_relation.json'))
    assert saved['tasks'] == ['a', 'b', 'c'] and saved['measurements'][0][0] == 2
    assert saved['relation'] == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    split = model.routing['grad_split']
    assert split.relation.int().tolist() == saved['relation'] and not split.awaiting_affinity
    # routing is on: c's loss reaches only c's group (channels 4-5) of the split layer
    model.zero_grad(set_to_none=True)
    model.task_loss('c', toy_batches(9)['c'])[0].backward()
    w = model.backbone.lin.weight.grad
    assert torch.count_nonzero(w[:4]) == 0 and torch.count_nonzero(w[4:]) > 0
    # a later run reuses the file
    again = build(toy_cfg, grad_split=dict(modules=['lin'], relation=str(tmp_path / 'gradsplit_relation.json')))
    assert again.routing['grad_split'].relation.int().tolist() == saved['relation']


def run_affinity_warmup(model, tmp_path, **hook_kw):
    from types import SimpleNamespace

    from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper
    from projects.allinone.routing.gradsplit import GradSplitAffinityHook
    wrapper = MultiTaskOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.005))
    runner = SimpleNamespace(model=model, optim_wrapper=wrapper, work_dir=str(tmp_path), iter=0)
    hook = GradSplitAffinityHook(warmup_iters=4, interval=1, **hook_kw)
    hook.before_train(runner)
    for i in range(4):
        runner.iter = i
        hook.before_train_iter(runner, i, toy_batches(i))
        model.train_step(toy_batches(i), wrapper)
        hook.after_train_iter(runner, i)
    return json.load(open(tmp_path / 'gradsplit_relation.json'))


def test_an_asymmetric_relation(toy_cfg, tmp_path):
    """b fits the same target as a with a 10x loss weight (a 10x gradient along a's direction). At first
    order Z[t->u] ~ lr g_t.g_u / L_u: at threshold 0 the relation is symmetric (a and b help each other).
    normalize='self' scores t's help to u against u's own step (~ g_t.g_u / |g_u|^2): several times 1 for
    b->a, a fraction for a->b, so at threshold 0.5 b may train a's group but a may not train b's."""
    cfg = copy.deepcopy(toy_cfg)
    cfg['tasks']['b']['weight'] = 10.0
    sym = run_affinity_warmup(build(cfg), tmp_path / 'sym', threshold=0.0)
    assert sym['relation'] == [[1, 1, 0], [1, 1, 0], [0, 0, 1]] and sym['normalize'] == 'loss'
    model = build(cfg)
    saved = run_affinity_warmup(model, tmp_path / 'self', threshold=0.5, normalize='self')
    score = torch.tensor([[float('nan') if v is None else v for v in row] for row in saved['score']])
    Z = torch.tensor(saved['affinity'])
    torch.testing.assert_close(score, Z / Z.diagonal()[None, :])
    assert 2 < score[1, 0] < 15 and 0.05 < score[0, 1] < 0.3 and score[2, 0] < 0 and score[0, 2] < 0, score
    assert saved['relation'] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert model.routing['grad_split'].relation.int().tolist() == saved['relation']
    # routing on: a's loss no longer reaches b's group (channels 2-3); b's reaches a's and its own
    for task, zero, nonzero in (('a', slice(2, 6), slice(0, 2)), ('b', slice(4, 6), slice(0, 4))):
        model.zero_grad(set_to_none=True)
        model.task_loss(task, toy_batches(9)[task])[0].backward()
        w = model.backbone.lin.weight.grad
        assert torch.count_nonzero(w[zero]) == 0 and bool((w[nonzero].abs().sum(1) > 0).all()), task
    with pytest.raises(ValueError, match='normalize'):
        from projects.allinone.routing.gradsplit import GradSplitAffinityHook
        GradSplitAffinityHook(normalize='cosine')
