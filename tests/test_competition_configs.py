"""Every competition config of configs/ runs as a competitor runs it, on a tree in the challenge layout.

Each config is loaded as it is and reduced in size by overrides only (input size, backbone width and
depth, queries, decoder layers, batch sizes: ``small_config``), written next to the run, and driven
through the command-line tools: ``tools/train.py --data-root --max-iters 2`` (pretrained init from a
checkpoint the test writes, 2 iterations, validation, a checkpoint), ``tools/test.py --tta --submit``
on the labeled validation split (each task's views merged by its library's TTA model), and
``tools/score_submission.py`` on that file. Everything else (DINO, SETR-PUP / Mask2Former,
ArcFace, TBGC, layer-wise lr decay, EMA, the augmentation branches, TTA) is the real config's.
"""
import copy
import json
import os
import os.path as osp
import resource
import subprocess
import sys

import pytest
import torch

from conftest import REPO

COMPETITION = ['allinone.py', 'tbgc-dino-m2f-arcface_swin-l-in21k-pre_8gpu-52k_track1.py']
#: configs that only inherit another and change nothing: they run what their base runs
ALIASES = {'tbgc-dino-setrpup-linear_vit-b16-in21k-pre_8gpu-52k_track1.py': 'allinone.py'}
#: the image-size keys of the pipelines / preprocessors, scaled by SHRINK (896 px -> 64 px)
SIZE_KEYS = ('scale', 'img_scale', 'crop_size', 'scales', 'border', 'size', 'max_size')
SHRINK = 64 / 896


def shrink_sizes(obj, factor=SHRINK, key=None):
    """Every image size under a size key of ``obj`` times ``factor`` (ints, tuples, lists of tuples)."""
    if isinstance(obj, dict):
        return type(obj)({k: shrink_sizes(v, factor, k if k in SIZE_KEYS else key) for k, v in obj.items()})
    if isinstance(obj, (list, tuple)):
        return type(obj)(shrink_sizes(v, factor, key) for v in obj)
    if key is not None and isinstance(obj, int) and not isinstance(obj, bool):
        return int(round(obj * factor)) or (1 if obj > 0 else -1)
    return obj


def _reduce_vit(cfg):
    dims = 64
    cfg.model.backbone.update(arch=dict(embed_dims=dims, num_layers=4, num_heads=2, feedforward_channels=128),
                              out_indices=(0, 1, 2, 3), img_size=64, drop_path_rate=0.1)
    det, seg, cls = cfg.model.tasks.det, cfg.model.tasks.seg, cfg.model.tasks.cls
    det.neck[0].update(in_channels=[dims] * 4, out_channels=dims)
    det.neck[1].in_channels = [dims] * 4
    seg.decode_head.update(in_channels=dims, channels=32)
    seg.auxiliary_head.update(in_channels=dims, channels=32)
    cls.head.in_channels = dims


def _reduce_swin(cfg):
    chans = [32, 64, 128, 256]
    cfg.model.backbone.update(arch=dict(embed_dims=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8]),
                              window_size=4, img_size=64)
    det, seg, cls = cfg.model.tasks.det, cfg.model.tasks.seg, cfg.model.tasks.cls
    det.neck.in_channels = chans[1:]
    m2f = seg.decode_head
    m2f.update(in_channels=chans, num_queries=10)
    m2f.pixel_decoder.encoder.num_layers = 1
    m2f.transformer_decoder.num_layers = 3  # one round over the 3 feature levels
    m2f.train_cfg.num_points = 256
    cls.head.in_channels = chans[-1]


def small_config(name, ckpt_dir):
    """The config ``name`` with the overrides that make a CPU run of a few seconds per iteration, written
    as a file next to the run, and a backbone checkpoint (random weights, the reduced backbone's keys) for
    its pretrained init."""
    from mmengine.config import Config

    from projects.allinone.registry import MODELS
    cfg = Config.fromfile(osp.join(REPO, 'configs', name))
    backbone_type = cfg.model.backbone.type
    {'VisionTransformer': _reduce_vit, 'SwinTransformer': _reduce_swin}[backbone_type](cfg)
    det = cfg.model.tasks.det
    det.update(num_queries=20)
    det.encoder.num_layers, det.decoder.num_layers = 1, 1
    det.dn_cfg.group_cfg.num_dn_queries = 10
    det.test_cfg.max_per_img = 20
    cfg.tta_model.tta.det.tta_cfg.max_per_img = 20
    cfg.model.tasks.seg.data_preprocessor.size = (64, 64)
    for section in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        for task, loader in cfg[section].items():
            loader.dataset.pipeline = shrink_sizes(loader.dataset.pipeline)
            loader.update(num_workers=0, persistent_workers=False)
            loader.batch_size = min(loader.batch_size, 4)
    cfg.tta_pipeline = shrink_sizes(cfg.tta_pipeline)
    # one validation and one checkpoint, at the end: --max-iters scales these with the schedule
    cfg.train_cfg.val_interval = cfg.default_hooks.checkpoint.interval = cfg.train_cfg.max_iters
    cfg.default_hooks.checkpoint.max_keep_ckpts = 1
    cfg.default_hooks.logger.interval = 1
    cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]
    # the pretrained init reads a checkpoint of the reduced backbone, written here
    init = cfg.model.backbone.init_cfg
    assert init.type == 'Pretrained' and init.checkpoint.startswith('https://download.openmmlab.com/')
    backbone = MODELS.build(dict(cfg.model.backbone, init_cfg=None))
    init.checkpoint = osp.join(ckpt_dir, f'{backbone_type}_pretrained.pth')
    torch.save(dict(state_dict={f'backbone.{k}': v for k, v in backbone.state_dict().items()}), init.checkpoint)
    out = osp.join(ckpt_dir, 'small_' + name)
    with open(out, 'w') as f:  # Config.dump sorts the keys, which would reorder the tasks
        f.write(''.join(f'{k} = {v!r}\n' for k, v in cfg.to_dict().items()))
    return out


def run(args, cwd, timeout=900):
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='2')
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f'{osp.basename(args[0])}: {after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime:.1f} s CPU')
    if proc.returncode != 0:
        raise AssertionError(f'{args[:2]} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}')
    return proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize('name', COMPETITION)
def test_competition_config_trains_validates_exports_and_scores(registered, challenge_tree, tmp_path, name):
    tree = challenge_tree
    config = small_config(name, str(tmp_path))
    work = str(tmp_path / 'work')
    tools = osp.join(REPO, 'tools')
    log = run([osp.join(tools, 'train.py'), config, '--data-root', tree.train_root, '--max-iters', '2',
               '--work-dir', work], cwd=tmp_path)
    assert 'backbone load report' in log and 'tensors loaded; 0 shape mismatched, 0 missing' in log
    assert 'Iter(train) [2/2]' in log
    board = json.load(open(osp.join(work, 'leaderboard.json')))
    assert 0.0 <= board['leaderboard/A'] <= 1.0 and 'leaderboard/B' in board
    ckpt = osp.join(work, 'iter_2.pth')
    assert osp.isfile(ckpt)

    # the labeled validation split with test-time augmentation (flips x scales per task): leaderboard,
    # submission file, and the offline scoring of that file
    sub = str(tmp_path / 'val_submission.json')
    log = run([osp.join(tools, 'test.py'), config, ckpt, '--data-root', tree.train_root, '--tta', '--work-dir', work,
               '--submit', sub], cwd=tmp_path)
    assert "test-time augmentation for task(s) ['det', 'seg', 'cls']" in log and 'leaderboard A' in log
    test_board = json.load(open(osp.join(work, 'leaderboard_test.json')))
    scores_file = str(tmp_path / 'scores.json')
    run([osp.join(tools, 'score_submission.py'), sub, tree.train_root, '--split', 'val', '--out', scores_file],
        cwd=tmp_path)
    scores = json.load(open(scores_file))
    assert scores['cls'] == pytest.approx(test_board['cls/accuracy/top1'] / 100)
    assert scores['dec'] == pytest.approx(test_board.get('det/coco/bbox_mAP_50', 0.0), abs=1e-3)
    assert scores['seg'] == pytest.approx(test_board['seg/mIoU'] / 100, abs=0.02)  # polygonisation of tiny maps


def test_alias_configs_are_their_base():
    """A config that only inherits (the baseline under its OpenMMLab name) is its base, key for key."""
    from mmengine.config import Config
    for alias, base in ALIASES.items():
        a = Config.fromfile(osp.join(REPO, 'configs', alias)).to_dict()
        b = Config.fromfile(osp.join(REPO, 'configs', base)).to_dict()
        assert a == b, alias


def test_every_config_is_exercised():
    """Each config of configs/ is run by a test: competition ones here, the demo ones in their tests."""
    demo_tests = {'allinone_demo.py': 'test_tools.py', 'allinone_demo_tbgc.py': 'test_tools.py',
                  'allinone_demo_finetune.py': 'test_finetune.py'}
    covered = set(COMPETITION) | set(ALIASES) | set(demo_tests) | set(DEMO_RUNS)
    configs = {f for f in os.listdir(osp.join(REPO, 'configs')) if f.endswith('.py')}
    assert configs - covered == set(), 'configs without a test that runs them'


#: demo configs without a run elsewhere: trained 2 iterations here (test_demo_config_runs)
DEMO_RUNS = ['allinone_demo_shared_neck.py', 'allinone_demo_gradsplit.py', 'allinone_demo_drmgf.py',
             'allinone_demo_recon.py']


@pytest.mark.slow
@pytest.mark.parametrize('name', DEMO_RUNS)
def test_demo_config_runs(registered, demo_cfg, tmp_path, name):
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(osp.join(REPO, 'configs', name))
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator', 'test_evaluator'):
        cfg[key] = copy.deepcopy(demo_cfg[key])  # the small demo data (same pipelines: demo.py)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None  # validation: the demo's own tests
    if name == 'allinone_demo_recon.py':
        cfg.model.recon.report = recon_report(demo_cfg, tmp_path)
    from projects.allinone.utils.schedule import apply_max_iters
    apply_max_iters(cfg, 2 if name != 'allinone_demo_drmgf.py' else 3)
    if name == 'allinone_demo_drmgf.py':
        cfg.train_cfg.round_iters = 1  # one round: 3 passes of 1 step, then the fusion
    cfg.default_hooks.checkpoint = None  # checkpoints: the demo's own tests (each write formats the config: ~4 s)
    cfg.default_hooks.logger.interval = 1
    cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == cfg.train_cfg.max_iters
    losses = [k for k in runner.message_hub.log_scalars if k.endswith('.loss')]
    assert sorted(losses) == ['train/cls.loss', 'train/det.loss', 'train/seg.loss']


def recon_report(demo_cfg, tmp_path):
    """Recon's search (its hook, on the demo for 2 iterations) writes the report the config reads."""
    from mmengine.runner import Runner
    cfg = copy.deepcopy(demo_cfg)
    cfg.work_dir = str(tmp_path / 'search')
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.train_cfg.max_iters = 1
    cfg.default_hooks.checkpoint = None
    cfg.custom_hooks = list(cfg.custom_hooks) + [dict(type='ReconSearchHook', out_dir=str(tmp_path / 'report'))]
    Runner.from_cfg(cfg).train()
    return str(tmp_path / 'report' / 'recon_report.json')
