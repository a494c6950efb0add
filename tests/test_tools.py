"""The command-line tools, run as a user runs them (subprocesses, from another directory)."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

from conftest import REPO


def run(args, cwd, check=True):
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    proc = subprocess.run([sys.executable] + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
    return proc


def small_overrides(data):
    """--cfg-options that point the demo config at ``data`` for a short run."""
    opts = []
    for task, sub in (('det', 'dec'), ('seg', 'seg'), ('cls', 'cls')):
        for section in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            opts.append(f'{section}.{task}.dataset.data_root={data}/{sub}/')
    for section in ('val_evaluator', 'test_evaluator'):
        opts.append(f'{section}.det.ann_file={data}/dec/val.json')
    opts += ['train_cfg.max_iters=3', 'train_cfg.val_interval=3', 'default_hooks.checkpoint.interval=3',
             'default_hooks.logger.interval=1']
    return opts


@pytest.mark.slow
def test_train_then_test_and_submit_from_another_directory(demo_data, tmp_path):
    work = tmp_path / 'work'
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    cfg = osp.relpath(osp.join(REPO, 'configs', 'allinone_demo.py'), elsewhere)
    train = osp.relpath(osp.join(REPO, 'tools', 'train.py'), elsewhere)
    test = osp.relpath(osp.join(REPO, 'tools', 'test.py'), elsewhere)
    opts = small_overrides(demo_data)
    run([train, cfg, '--work-dir', 'work_rel', '--cfg-options'] + opts, cwd=elsewhere)
    assert osp.exists(elsewhere / 'work_rel' / 'iter_3.pth'), 'work dir is relative to the caller'
    assert osp.exists(elsewhere / 'work_rel' / 'leaderboard.json')
    proc = run([test, cfg, 'work_rel/iter_3.pth', '--work-dir', str(work), '--submit', 'sub.json',
                '--cfg-options'] + opts, cwd=elsewhere)
    assert 'leaderboard A' in proc.stdout + proc.stderr
    sub = json.load(open(elsewhere / 'sub.json'))
    assert set(sub) == {'dec', 'seg', 'cls'}
    n_cls = len(open(osp.join(demo_data, 'cls', 'val.txt')).read().split())
    assert len(sub['cls']) == n_cls // 2
    assert len(sub['seg']) == len(os.listdir(osp.join(demo_data, 'seg', 'images', 'val')))
    for det in sub['dec']:
        assert set(det) == {'image_id', 'category_id', 'bbox', 'score'} and len(det['bbox']) == 4
    board = json.load(open(work / 'leaderboard_test.json'))
    assert 0.0 <= board['leaderboard/A'] <= 1.0
    # the same images as an unlabeled test split (no label read, nothing scored): same predictions
    proc = run([test, cfg, 'work_rel/iter_3.pth', '--work-dir', str(tmp_path / 'work_unl'), '--submit',
                'sub_unlabeled.json', '--images', f'det={demo_data}/dec/val', f'seg={demo_data}/seg/images/val',
                f'cls={demo_data}/cls/val', '--image-list', f'det={demo_data}/dec/val.json',
                f'cls={demo_data}/cls/val.txt', '--cfg-options'] + opts, cwd=elsewhere)
    assert 'format only' in proc.stdout + proc.stderr and 'leaderboard A' not in proc.stdout + proc.stderr
    unlabeled = json.load(open(elsewhere / 'sub_unlabeled.json'))
    assert unlabeled['cls'] == sub['cls'] and unlabeled['seg'] == sub['seg']
    assert sorted(map(json.dumps, unlabeled['dec'])) == sorted(map(json.dumps, sub['dec']))
    # scoring the exported file offline reproduces what tools/test.py printed
    proc = run([osp.join(REPO, 'tools', 'score_submission.py'), 'sub.json', demo_data, '--num-seg-classes', '6',
                '--num-cls-classes', '6', '--out', 'scores.json'], cwd=elsewhere)
    scores = json.load(open(elsewhere / 'scores.json'))
    assert scores['cls'] == pytest.approx(board['cls/accuracy/top1'] / 100)
    assert scores['dec'] == pytest.approx(board.get('det/coco/bbox_mAP_50', 0.0), abs=1e-3)  # mmdet rounds
    assert scores['seg'] == pytest.approx(board['seg/mIoU'] / 100, abs=5e-3)  # polygonisation loss
    # the run comparison reads the same files a real comparison would
    proc = run([osp.join(REPO, 'tools', 'compare_runs.py'), 'work_rel', 'work_rel', '--names', 'a', 'b',
                '--out', 'cmp'], cwd=elsewhere)
    assert '| a |' in proc.stdout and 'as aggregated' in proc.stdout
    assert osp.exists(elsewhere / 'cmp' / 'grad_norms.png')


@pytest.mark.slow
def test_amp_training_runs_on_cpu(demo_data, tmp_path):
    """--amp switches to the per-task AMP wrapper (bf16 autocast + loss scaling on CPU)."""
    proc = run([osp.join(REPO, 'tools', 'train.py'), osp.join(REPO, 'configs', 'allinone_demo_tbgc.py'),
                '--amp', '--no-validate', '--work-dir', str(tmp_path / 'w'), '--cfg-options']
               + [o for o in small_overrides(demo_data) if not o.startswith('val')] + ['train_cfg.max_iters=2'],
               cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert 'MultiTaskAmpOptimWrapper' in log
    assert 'Iter(train) [2/2]' in log


@pytest.mark.slow
def test_train_without_data_names_the_missing_path(tmp_path):
    proc = run([osp.join(REPO, 'tools', 'train.py'), osp.join(REPO, 'configs', 'allinone.py'),
                '--work-dir', str(tmp_path / 'w')], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    err = proc.stderr
    assert 'FileNotFoundError' in err and 'data/track1_train_data/dec/' in err
    assert 'make demo' in err
    assert 'check_data' in err  # stopped by the data check, before any model is built


def test_distributed_with_mmengines_ddp_wrapper_is_refused(tmp_path):
    """MMDistributedDataParallel sums the task losses and skips the per-task step: refused by name
    (distributed training itself is tested in test_distributed.py)."""
    proc = run([osp.join(REPO, 'tools', 'train.py'), osp.join(REPO, 'configs', 'allinone_demo.py'),
                '--launcher', 'pytorch', '--cfg-options', 'model_wrapper_cfg.type=MMDistributedDataParallel'],
               cwd=tmp_path, check=False)
    assert proc.returncode != 0 and 'model_wrapper_cfg' in proc.stderr
    assert 'MultiTaskDistributedDataParallel' in proc.stderr


@pytest.mark.slow
def test_bad_config_key_is_named(demo_data, tmp_path):
    opts = small_overrides(demo_data)
    proc = run([osp.join(REPO, 'tools', 'train.py'), osp.join(REPO, 'configs', 'allinone_demo.py'),
                '--work-dir', str(tmp_path / 'w'), '--cfg-options'] + opts +
               ["optim_wrapper.aggregator.type=TBGCAgregator"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert 'TBGCAgregator' in proc.stderr


def test_competition_config_builds(registered):
    """The ViT-B + DINO + SETR-PUP + 196-class config builds with the real parts (no data needed)."""
    import torch
    from mmengine.config import Config

    from projects.allinone.registry import MODELS
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'allinone.py'))
    cfg.model.tasks.seg.decode_head.norm_cfg = dict(type='BN', requires_grad=True)
    cfg.model.tasks.seg.auxiliary_head.norm_cfg = dict(type='BN', requires_grad=True)
    model = MODELS.build(cfg.model)
    assert type(model.tasks['det']).__name__ == 'DINO'
    assert type(model.tasks['seg'].decode_head).__name__ == 'SETRUPHead'
    assert model.tasks['det'].bbox_head.num_classes == 45
    assert model.tasks['seg'].decode_head.num_classes == 19
    assert model.tasks['cls'].head.num_classes == 196
    n_backbone = sum(p.numel() for _, p in model.shared_parameters())
    assert 80e6 < n_backbone < 90e6  # ViT-Base
    with torch.no_grad():
        feats = model.extract_feat(torch.zeros(1, 3, 64, 64))
    assert len(feats) == 4 and feats[0].shape[1] == 768
