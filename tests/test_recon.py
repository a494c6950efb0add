"""Recon: the conflict search, per-task copies of shared layers, checkpoints, and the collapse to
single-task checkpoints. Mostly on a small synthetic two-task model (seconds)."""
import copy
import json
import os.path as osp
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.model import BaseModule
from mmengine.registry import MODELS as ROOT_MODELS
from torch import nn

from conftest import DEMO_CFG, REPO, register_toy, toy_task_base

CONFLICT = 'backbone.conf'


class ReconToyBackbone(BaseModule):
    """``stem -> other -> norm`` (what both tasks fit alike) and ``conf`` (read with opposite signs)."""

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg)
        self.stem = nn.Linear(4, 8)
        self.other = nn.Linear(8, 6)
        self.norm = nn.BatchNorm1d(6)
        self.conf = nn.Linear(4, 3)

    def forward(self, x):
        return self.norm(self.other(torch.relu(self.stem(x)))), self.conf(x)


class ReconToyTask(toy_task_base()):
    """A task model of the AllInOne kind: ``loss`` / ``predict`` on the shared features."""

    def __init__(self, sign=1.0, backbone=None, data_preprocessor=None, init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.backbone = ROOT_MODELS.build(backbone) if backbone else None
        self.head = nn.Linear(6, 1)
        nn.init.constant_(self.head.weight, 0.5)  # both tasks fit the shared path alike
        self.sign = float(sign)

    def _features(self, feats):
        return self.backbone(feats) if self.backbone is not None else feats

    def loss(self, feats, data_samples=None):
        a, c = self._features(feats)
        return dict(loss=(self.head(a) - 1).square().mean() + self.sign * c.mean())

    def predict(self, feats, data_samples=None):
        a, c = self._features(feats)
        return self.head(a) + c.sum(-1, keepdim=True)



@pytest.fixture(scope='module')
def toy(registered):
    register_toy(ReconToyBackbone, ReconToyTask)
    return dict(type='AllInOneModel', backbone=dict(type='ReconToyBackbone'),
                tasks=dict(a=dict(type='ReconToyTask', sign=1.0), b=dict(type='ReconToyTask', sign=-1.0)))


def build(cfg, seed=0, **extra):
    from projects.allinone.registry import MODELS
    cfg = copy.deepcopy(dict(cfg))
    cfg.update(extra)
    torch.manual_seed(seed)
    return MODELS.build(cfg)


def toy_batches(seed, n=32):
    g = torch.Generator().manual_seed(seed)
    return {t: dict(inputs=1.0 + 0.5 * torch.randn(n, 4, generator=g), data_samples=None) for t in ('a', 'b')}


def predictions(model, batches):
    model.eval()
    with torch.no_grad():
        return {t: model.test_step({t: b}) for t, b in batches.items()}


def wrapper_for(model, lr=0.1):
    from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper
    return MultiTaskOptimWrapper(torch.optim.SGD(model.parameters(), lr=lr), aggregator=dict(type='SumAggregator'))


# ---------------------------------------------------------------------- search
def run_search(model, tmp_path, iters=12, **hook_kw):
    from projects.allinone.routing.recon import ReconSearchHook
    wrapper = wrapper_for(model, lr=0.01)
    runner = SimpleNamespace(model=model, optim_wrapper=wrapper, work_dir=str(tmp_path), iter=iters)
    hook = ReconSearchHook(out_dir=str(tmp_path / 'search'), **hook_kw)
    hook.before_train(runner)
    model.train()
    for i in range(iters):
        model.train_step(toy_batches(100 + i), wrapper)
        hook.after_train_iter(runner, i)
    hook.after_train(runner)
    assert not wrapper.task_grad_hooks  # the wrapper is given back without the search's hook
    return hook


def test_search_ranks_the_conflicting_layer_first(toy, tmp_path):
    from projects.allinone.routing.recon.report import rank_layers
    model = build(toy)
    hook = run_search(model, tmp_path)
    report = json.load(open(hook.report_path))
    assert osp.getsize(osp.join(tmp_path, 'search', 'recon_top_layers.png')) > 0
    assert report['tasks'] == ['a', 'b'] and report['pairs'] == [['a', 'b']] and report['iterations'] == 12
    top = report['layers'][0]
    assert top['name'] == CONFLICT and top['rank'] == 1
    assert top['conflicts'] == top['observations'] == 12  # opposite gradients: every cosine near -1
    assert sum(top['hist'][0][:10]) == 12 and top['mean_cos'][0] < -0.9
    assert all(layer['conflicts'] <= 6 for layer in report['layers'][1:])
    # S is chosen afterwards from the stored histograms; both scores agree here
    for S in (-0.5, 0.0, 0.5):
        for score in ('raw', 'normalized'):
            assert rank_layers(report, S, score)[0]['name'] == CONFLICT
    assert all(r['conflicts'] == 0 for r in rank_layers(report, -1.0))
    assert all(r['conflicts'] == r['observations'] for r in rank_layers(report, 1.0))
    from projects.allinone.routing.recon.report import format_ranking
    assert CONFLICT in format_ranking(report, top=1).splitlines()[2]
    assert len(format_ranking(report, top=0).splitlines()) == 2  # header only (the tool's --top 0)
    # where the cosines lie, to choose S by: 12 of the 12 x 4 layer observations are conf's, near -1
    from projects.allinone.routing.recon.report import cosine_quantiles
    q = cosine_quantiles(report, (0.1, 0.5))
    assert q[0.1] < -0.9 and q[0.5] > q[0.1]


def test_every_shared_parameter_is_in_exactly_one_scored_layer(toy, registered):
    from projects.allinone.registry import MODELS
    from projects.allinone.routing.recon.search_hook import GradConflictRecorder, shared_layers
    models = [build(toy), MODELS.build(Config.fromfile(DEMO_CFG).model)]
    for model in models:
        layers = shared_layers(model)
        shared = model.parameter_partition()['shared']
        ids = [id(p) for _, _, ps in layers for p in ps]
        assert len(ids) == len(set(ids)) == len(shared) and set(ids) == {id(p) for p in shared}
        for name, module, params in layers:  # a layer is the module that owns the parameters
            assert {id(p) for p in module.parameters(recurse=False)} == {id(p) for p in params}
        rec = GradConflictRecorder(layers, model.task_names)
        assert sum(rec.numel) == sum(p.numel() for p in shared)
    names = [n for n, _, _ in shared_layers(models[1])]
    assert 'backbone.layer4.1.conv2' in names and 'backbone.layer4.1.bn2' in names and 'backbone' not in names


def test_recorder_cosines_match_a_direct_computation(toy):
    from projects.allinone.routing.recon.search_hook import GradConflictRecorder, shared_layers
    model = build(toy)
    rec = GradConflictRecorder(shared_layers(model), model.task_names, bin_width=0.01)
    grads = {}
    for t, b in toy_batches(3).items():
        model.zero_grad(set_to_none=True)
        model.task_loss(t, b)[0].backward()
        grads[t] = {n: p.grad.clone() for n, p in model.shared_parameters()}
        rec.record(t)
    rec.end_iteration()
    for k, name in enumerate(rec.names):
        ga = torch.cat([g.flatten() for n, g in grads['a'].items() if n.rpartition('.')[0] == name])
        gb = torch.cat([g.flatten() for n, g in grads['b'].items() if n.rpartition('.')[0] == name])
        cos = float(torch.nn.functional.cosine_similarity(ga, gb, dim=0))
        assert float(rec.sum_cos[k, 0]) == pytest.approx(cos, abs=1e-5)
        assert int(rec.hist[k, 0].argmax()) == min(int((cos + 1) / 0.01), 199)


# ---------------------------------------------------------------------- conversion
LAYERS = ['backbone.conf', 'backbone.norm', 'stem']  # a name of the backbone works too


def test_conversion_keeps_every_tasks_outputs(toy):
    plain = build(toy, seed=0)
    conv = build(toy, seed=0, recon=dict(layers=LAYERS))
    assert conv.routing['recon'].layers == ['backbone.conf', 'backbone.norm', 'backbone.stem']
    batches = toy_batches(7)
    p, c = predictions(plain, batches), predictions(conv, batches)
    for t in batches:
        assert torch.equal(p[t], c[t])
    plain.train(), conv.train()
    for t, b in batches.items():
        assert torch.equal(plain.task_loss(t, b)[0], conv.task_loss(t, b)[0])
    # the copies are their task's; only the unconverted layers stay shared
    part = conv.parameter_partition()
    named = {id(p): n for n, p in conv.named_parameters()}
    assert sorted(named[id(p)] for p in part['shared']) == ['backbone.other.bias', 'backbone.other.weight']
    assert all('.copies.a.' in named[id(p)] or named[id(p)].startswith('tasks.a.') for p in part['a'])
    assert sum(len(v) for v in part.values()) == len(list(conv.parameters()))
    # attributes of the layer are read through the running task's copy; no task, no forward
    assert conv.backbone.conf.out_features == 3
    with pytest.raises(RuntimeError, match='no task is running'):
        conv(torch.randn(2, 4))


def test_a_step_on_one_task_changes_only_its_copies(toy):
    conv = build(toy, recon=dict(layers=LAYERS))
    before = {n: p.detach().clone() for n, p in conv.named_parameters()}
    conv.train()
    conv.train_step({'a': toy_batches(1)['a']}, wrapper_for(conv))
    changed = {n for n, p in conv.named_parameters() if not torch.equal(p, before[n])}
    copies = {n for n in before if '.copies.' in n}
    assert {n for n in copies if '.copies.a.' in n} <= changed
    assert not {n for n in copies if '.copies.b.' in n} & changed
    assert {'backbone.other.weight', 'tasks.a.head.weight'} <= changed
    assert not any(n.startswith('tasks.b.') for n in changed)
    # per-task BatchNorm statistics too
    assert not torch.equal(conv.backbone.norm.copies.a.running_mean, conv.backbone.norm.copies.b.running_mean)


def test_a_two_task_step_gives_each_copy_exactly_its_own_tasks_gradient(toy):
    """Both tasks in one step: copy t of every converted layer moves by -lr times the gradient task t's loss
    alone gives the plain layer (the two differ), so a layer that ran one copy for every task (or summed
    the tasks into each copy) fails; the still-shared layer gets the sum."""
    plain = build(toy, seed=0)
    conv = build(toy, seed=0, recon=dict(layers=LAYERS))
    data = toy_batches(5)
    plain.train(), conv.train()
    own = {}
    for t, b in data.items():
        plain.zero_grad(set_to_none=True)
        plain.task_loss(t, copy.deepcopy(b))[0].backward()
        own[t] = {n: p.grad.clone() for n, p in plain.named_parameters() if p.grad is not None}
    before = {n: p.detach().clone() for n, p in conv.named_parameters()}
    conv.train_step(copy.deepcopy(data), wrapper_for(conv, lr=0.1))
    after = dict(conv.named_parameters())
    for layer in ('backbone.conf', 'backbone.norm', 'backbone.stem'):
        for pn in ('weight', 'bias'):
            assert not torch.allclose(own['a'][f'{layer}.{pn}'], own['b'][f'{layer}.{pn}'])
            for t in ('a', 'b'):
                key = f'{layer}.copies.{t}.{pn}'
                torch.testing.assert_close(after[key].detach() - before[key], -0.1 * own[t][f'{layer}.{pn}'],
                                           msg=key)
    shared = 'backbone.other.weight'
    torch.testing.assert_close(after[shared].detach() - before[shared], -0.1 * (own['a'][shared] + own['b'][shared]))


def trained_converted(toy, steps=2):
    conv = build(toy, recon=dict(layers=LAYERS))
    wrapper = wrapper_for(conv)
    conv.train()
    for i in range(steps):
        conv.train_step(toy_batches(20 + i), wrapper)
    return conv


def test_strict_checkpoint_round_trip(toy, tmp_path):
    from mmengine.runner import load_checkpoint, save_checkpoint
    conv = trained_converted(toy)
    path = str(tmp_path / 'conv.pth')
    save_checkpoint(dict(state_dict=conv.state_dict(), meta={}), path)
    other = build(toy, seed=5, recon=dict(layers=LAYERS))
    load_checkpoint(other, path, strict=True, map_location='cpu')
    again = build(toy, seed=6, recon=dict(layers=LAYERS))
    again.load_state_dict(torch.load(path)['state_dict'], strict=True)
    batches = toy_batches(8)
    ref = predictions(conv, batches)
    for model in (other, again):
        out = predictions(model, batches)
        assert all(torch.equal(out[t], ref[t]) for t in batches)
    assert not torch.equal(ref['a'], predictions(build(toy, seed=5, recon=dict(layers=LAYERS)), batches)['a'])


def test_a_pre_conversion_checkpoint_fills_every_copy(toy, tmp_path):
    from mmengine.runner import load_checkpoint, save_checkpoint
    plain = build(toy, seed=3)
    plain.train()
    plain.train_step(toy_batches(2), wrapper_for(plain))  # BN statistics moved too
    path = str(tmp_path / 'plain.pth')
    save_checkpoint(dict(state_dict=plain.state_dict(), meta={}), path)
    conv = build(toy, seed=4, recon=dict(layers=LAYERS))
    load_checkpoint(conv, path, strict=True, map_location='cpu')  # no missing / unexpected key
    for t in ('a', 'b'):
        assert torch.equal(conv.backbone.conf.copies[t].weight, plain.backbone.conf.weight)
        assert torch.equal(conv.backbone.norm.copies[t].running_var, plain.backbone.norm.running_var)
    batches = toy_batches(9)
    p, c = predictions(plain, batches), predictions(conv, batches)
    assert all(torch.equal(p[t], c[t]) for t in batches)


def test_init_weights_starts_every_copy_alike(toy):
    cfg = copy.deepcopy(toy)
    cfg['backbone'] = dict(type='ReconToyBackbone', init_cfg=dict(type='Kaiming', layer='Linear'))
    conv = build(cfg, recon=dict(layers=LAYERS))
    conv.init_weights()
    copies = conv.backbone.conf.copies
    assert torch.equal(copies.a.weight, copies.b.weight)


def test_layers_from_a_search_report(toy, tmp_path):
    from projects.allinone.routing.recon.report import select_layers
    hook = run_search(build(toy), tmp_path)
    report = json.load(open(hook.report_path))
    conv = build(toy, recon=dict(report=hook.report_path, top_k=1))
    assert conv.routing['recon'].layers == [CONFLICT]
    assert select_layers(report, top_k=1, score='normalized') == [CONFLICT]
    numel = {lay['name']: lay['numel'] for lay in report['layers']}
    budget = numel[CONFLICT] / report['shared_params']  # room for exactly one copy of conf (T - 1 = 1)
    assert select_layers(report, param_budget=budget) == [CONFLICT]
    assert select_layers(report, param_budget=budget * 0.99) == []
    with pytest.raises(ValueError, match='exactly one of top_k and param_budget'):
        select_layers(report)


def test_conversion_errors(toy):
    with pytest.raises(KeyError, match='no layer'):
        build(toy, recon=dict(layers=['backbone.nope']))
    with pytest.raises(ValueError, match='not a shared layer'):
        build(toy, recon=dict(layers=['tasks.a.head']))
    with pytest.raises(ValueError, match='owns no parameters'):
        build(toy, recon=dict(layers=['backbone']))
    with pytest.raises(ValueError, match='exactly one of'):
        build(toy, recon=dict())


# ---------------------------------------------------------------------- collapse
def test_collapsed_checkpoint_reproduces_the_tasks_predictions(toy, tmp_path):
    from mmengine.runner import save_checkpoint

    from projects.allinone.registry import MODELS
    from tools.recon_collapse import main
    conv = trained_converted(toy)
    ckpt = str(tmp_path / 'conv.pth')
    save_checkpoint(dict(state_dict=conv.state_dict(), meta={}), ckpt)
    cfg_path = str(tmp_path / 'toy.py')
    Config(dict(model=dict(toy, recon=dict(layers=LAYERS)), default_scope='mmdet')).dump(cfg_path)
    main([cfg_path, ckpt, '--out', str(tmp_path / 'out')])
    batches = toy_batches(11)
    ref = predictions(conv, batches)
    for t in ('a', 'b'):
        state = torch.load(str(tmp_path / 'out' / f'{t}.pth'))
        assert not any('copies' in k for k in state['state_dict'])
        single_cfg = Config.fromfile(str(tmp_path / 'out' / f'{t}.py'))
        assert list(k for k, v in single_cfg.model.tasks.items() if v is not None) == [t]
        single = MODELS.build(single_cfg.model)
        assert single.task_names == [t] and 'recon' not in single.routing
        single.load_state_dict(state['state_dict'], strict=True)
        assert torch.equal(predictions(single, {t: batches[t]})[t], ref[t])


def test_collapse_to_the_librarys_own_classifier(registered, demo_data, tmp_path):
    """``--format native`` on the demo: an mmpretrain ImageClassifier with the shared ResNet."""
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DATASETS
    from mmengine.runner import save_checkpoint

    from projects.allinone.registry import MODELS
    from tools.recon_collapse import main

    from conftest import retarget
    cfg = Config.fromfile(DEMO_CFG)
    cfg.model.recon = dict(layers=['backbone.layer4.1.conv2', 'backbone.layer4.1.bn2', 'backbone.layer1.0.bn1'])
    torch.manual_seed(0)
    conv = MODELS.build(copy.deepcopy(cfg.model))
    with torch.no_grad():  # make the copies differ, as after training
        for t, m in conv.backbone.layer4[1].bn2.copies.items():
            m.bias.add_(0.1 * (1 + conv.task_names.index(t)))
    ckpt = str(tmp_path / 'conv.pth')
    save_checkpoint(dict(state_dict=conv.state_dict(), meta={}), ckpt)
    cfg_path = str(tmp_path / 'demo_recon.py')
    cfg.dump(cfg_path)
    main([cfg_path, ckpt, '--out', str(tmp_path / 'native'), '--tasks', 'cls', '--format', 'native'])
    native_cfg = Config.fromfile(str(tmp_path / 'native' / 'cls.py'))
    native = ROOT_MODELS.build(native_cfg.model)
    assert type(native).__name__ == 'ImageClassifier' and type(native.backbone).__name__ == 'ResNet'
    native.load_state_dict(torch.load(str(tmp_path / 'native' / 'cls.pth'))['state_dict'], strict=True)
    loader = retarget(copy.deepcopy(cfg.val_dataloader.cls), 'data/demo/', demo_data.rstrip('/') + '/')
    ds = DATASETS.build(loader.dataset)
    batch = pseudo_collate([ds[i] for i in range(2)])
    native.eval(), conv.eval()
    with torch.no_grad():
        a = native.test_step(copy.deepcopy(batch))
        b = conv.test_step({'cls': copy.deepcopy(batch)})
    for x, y in zip(a, b):
        assert torch.allclose(x.pred_score, y.pred_score, atol=1e-6)


@pytest.mark.slow
def test_search_tool_on_the_demo(demo_data, tmp_path):
    """tools/recon_search.py trains the demo for 2 iterations and writes the ranked report."""
    import subprocess
    import sys
    opts = []
    for task, sub in (('det', 'dec'), ('seg', 'seg'), ('cls', 'cls')):
        opts.append(f'train_dataloader.{task}.dataset.data_root={demo_data}/{sub}/')
        opts.append(f'train_dataloader.{task}.batch_size=2')
    proc = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'recon_search.py'), osp.join(REPO, DEMO_CFG),
                           '--iters', '2', '--work-dir', str(tmp_path / 'w'), '--out', str(tmp_path / 'r'),
                           '--threshold', '-0.02', '--cfg-options'] + opts,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.load(open(tmp_path / 'r' / 'recon_report.json'))
    assert report['iterations'] == 2 and len(report['pairs']) == 3 and report['threshold'] == -0.02
    assert [lay['rank'] for lay in report['layers']] == list(range(1, len(report['layers']) + 1))
    # 2 iterations x 3 pairs; 3 where the first step gives no gradient (the zero-initialised last norm of
    # each residual block cuts its branch at initialisation): a zero gradient is not a cosine
    obs = {lay['name']: lay['observations'] for lay in report['layers']}
    assert set(obs.values()) == {3, 6} and obs['backbone.conv1'] == 6 and obs['backbone.layer4.1.conv2'] == 3
    assert osp.exists(tmp_path / 'w' / 'iter_2.pth') and osp.exists(tmp_path / 'r' / 'recon_top_layers.png')
    rerank = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'recon_search.py'), '--from-report',
                             str(tmp_path / 'r' / 'recon_report.json'), '--score', 'normalized', '--top-k', '3'],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerank.returncode == 0, rerank.stderr[-3000:]
    assert 'recon=dict(layers=[' in rerank.stdout
    # the converted demo model takes its layers from the report and its weights from the search checkpoint
    from mmengine.runner import load_checkpoint

    from projects.allinone.registry import MODELS
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'allinone_demo_recon.py'))
    cfg.model.recon = dict(report=str(tmp_path / 'r' / 'recon_report.json'), top_k=3, threshold=-0.02)
    model = MODELS.build(cfg.model)
    assert model.routing['recon'].layers == [lay['name'] for lay in report['layers'][:3]]
    load_checkpoint(model, str(tmp_path / 'w' / 'iter_2.pth'), strict=True, map_location='cpu')
    search_sd = torch.load(str(tmp_path / 'w' / 'iter_2.pth'), weights_only=False)['state_dict']
    name = model.routing['recon'].layers[0]
    for t in model.task_names:
        copy_sd = dict(model.named_modules())[f'{name}.copies.{t}'].state_dict()
        assert all(torch.equal(v, search_sd[f'{name}.{k}']) for k, v in copy_sd.items())


def test_example_configs_build(registered):
    from projects.allinone.registry import MODELS
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'allinone_demo_gradsplit.py'))
    model = MODELS.build(cfg.model)
    assert list(model.routing['grad_split'].split_modules) == ['backbone.layer4.0', 'backbone.layer4.1']
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'allinone_demo_recon.py'))
    assert cfg.model.recon.param_budget == 0.05
