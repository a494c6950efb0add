"""The competitor's path: one data-root switch, evaluator files checked, schedule and lr scaling,
leaderboard B without a KeyError, per-class scores in leaderboard.json, class-aware sampling."""
import copy
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from mmengine.config import Config

from conftest import REPO

COMPETITION = osp.join(REPO, 'configs', 'allinone.py')
DATA_SECTIONS = ('train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator', 'test_evaluator')


def strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from strings(v)
    elif isinstance(obj, str):
        yield obj


def test_data_root_reroots_every_loader_and_evaluator_path(challenge_tree):
    from projects.allinone.utils.data_check import missing_data
    from projects.allinone.utils.data_root import set_data_root
    cfg = Config.fromfile(COMPETITION)
    assert missing_data(cfg, 'train')  # the default location is empty here
    changed = set_data_root(cfg, challenge_tree.train_root)
    # the six loader roots (3 tasks x train/val; test = val) and the detection evaluator's ann_file
    assert {c for c in changed if not c.startswith('test_')} == {
        f'{s}.{t}.dataset.data_root' for s in ('train_dataloader', 'val_dataloader') for t in ('det', 'seg', 'cls')
    } | {'val_evaluator.det.ann_file'}
    assert not [s for sec in DATA_SECTIONS for s in strings(cfg[sec]) if 'track1_train_data/' in s
                and not s.startswith(challenge_tree.train_root)]
    assert cfg.val_evaluator.det.ann_file == challenge_tree.train_root + 'dec/val.json'
    assert missing_data(cfg, 'train') == [] and missing_data(cfg, 'test') == []

    finetune = Config.fromfile(osp.join(REPO, 'configs', 'allinone_demo_finetune.py'))
    with pytest.raises(ValueError, match="no dataset or evaluator path of this config starts with its data_root"):
        set_data_root(finetune, challenge_tree.train_root)  # its data comes from another variable (new_root)


def test_cli_data_root_and_cfg_options_data_root_agree(challenge_tree, tmp_path, monkeypatch):
    from train import parse_args

    from projects.allinone.utils.cli import load_config
    monkeypatch.chdir(tmp_path)
    a = load_config(parse_args([COMPETITION, '--data-root', challenge_tree.train_root]))
    b = load_config(parse_args([COMPETITION, '--cfg-options', f'data_root={challenge_tree.train_root}',
                                'val_evaluator.det.ann_file=/elsewhere/val.json']))
    for sec in DATA_SECTIONS[:3]:
        assert a[sec] == b[sec]
    assert a.val_evaluator.det.ann_file == challenge_tree.train_root + 'dec/val.json'
    assert b.val_evaluator.det.ann_file == '/elsewhere/val.json'  # an explicit option wins over the re-rooting


def test_check_data_names_evaluator_files_and_the_switch(challenge_tree):
    from projects.allinone.utils import check_data
    from projects.allinone.utils.data_root import set_data_root
    cfg = Config.fromfile(COMPETITION)
    set_data_root(cfg, challenge_tree.train_root)
    cfg.val_evaluator.det.ann_file = challenge_tree.train_root + 'dec/val_typo.json'
    with pytest.raises(FileNotFoundError) as e:
        check_data(cfg, 'train')
    msg = str(e.value)
    assert f'val_evaluator.det.ann_file: {challenge_tree.train_root}dec/val_typo.json' in msg
    assert 'train_dataloader' not in msg  # the datasets are there
    assert '`--data-root DIR`' in msg and "data_root '" in msg


def test_max_iters_scales_every_boundary():
    from projects.allinone.utils.schedule import apply_max_iters, scale_schedulers
    cfg = Config.fromfile(COMPETITION)
    apply_max_iters(cfg, 5250)  # a tenth of the 52,500 iterations
    assert cfg.train_cfg.max_iters == 5250 and cfg.train_cfg.val_interval == 500
    assert cfg.default_hooks.checkpoint.interval == 500
    assert [(s['type'], s['begin'], s['end']) for s in cfg.param_scheduler] == [
        ('LinearLR', 0, 20), ('CosineAnnealingLR', 20, 5250)]
    assert cfg.param_scheduler[1]['eta_min'] == 1e-6  # values other than boundaries are kept
    apply_max_iters(cfg, 2)
    assert [(s['begin'], s['end']) for s in cfg.param_scheduler] == [(0, 1), (0, 2)]
    assert cfg.train_cfg.val_interval == 1 and cfg.default_hooks.checkpoint.interval == 1
    # milestones, T_max and epoch-based schedulers
    out = scale_schedulers([dict(type='MultiStepLR', by_epoch=False, milestones=[100, 101, 800], end=1000),
                            dict(type='CosineAnnealingLR', by_epoch=False, T_max=1000),
                            dict(type='LinearLR', by_epoch=True, begin=0, end=3)], 0.01)
    assert out[0]['milestones'] == [1, 2, 8] and out[0]['end'] == 10
    assert out[1]['T_max'] == 10 and out[2]['end'] == 3


def test_auto_scale_lr_by_gpus():
    from projects.allinone.utils.schedule import scale_lr_by_batch
    base = Config.fromfile(COMPETITION)
    assert base.auto_scale_lr == dict(enable=False, base_batch_size=dict(det=16, seg=16, cls=128))
    for gpus, lr in ((8, 1e-4), (4, 5e-5), (2, 2.5e-5), (1, 1.25e-5)):
        cfg = copy.deepcopy(base)
        msg = scale_lr_by_batch(cfg, gpus)
        assert cfg.optim_wrapper.optimizer.lr == pytest.approx(lr) and not cfg.auto_scale_lr.enable
        assert f'det {2 * gpus}/16' in msg
    cfg = copy.deepcopy(base)  # the same batch through gradient accumulation keeps the lr
    cfg.optim_wrapper.accumulative_counts = 8
    scale_lr_by_batch(cfg, 1)
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(1e-4)
    cfg = copy.deepcopy(base)
    cfg.auto_scale_lr.base_batch_size = 160  # one number: all tasks' images together
    scale_lr_by_batch(cfg, 4)
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(5e-5)
    cfg.auto_scale_lr.base_batch_size = dict(det=16)
    with pytest.raises(KeyError, match=r"no entry for task\(s\) \['seg', 'cls'\]"):
        scale_lr_by_batch(cfg, 4)


def test_dropping_tasks_adapts_boards_and_save_best():
    from projects.allinone.utils.dropped_tasks import adapt_to_dropped_tasks
    cfg = Config.fromfile(COMPETITION)
    assert adapt_to_dropped_tasks(cfg) == []  # nothing dropped: nothing changes
    cfg.model.tasks.seg = None  # leaderboard B of the challenge: without segmentation
    messages = adapt_to_dropped_tasks(cfg)
    assert cfg.val_cfg.leaderboard.boards == dict(B=['det', 'cls']) == cfg.test_cfg.leaderboard.boards
    assert cfg.default_hooks.checkpoint.save_best == 'leaderboard/B'
    assert any("names task(s) ['seg'] that this config drops" in m for m in messages)
    assert any("save_best='leaderboard/A'" in m and "by 'leaderboard/B' instead" in m for m in messages)

    cfg = Config.fromfile(COMPETITION)
    cfg.model.tasks.seg = cfg.model.tasks.cls = None  # finetuning one task
    adapt_to_dropped_tasks(cfg)
    assert 'boards' not in cfg.val_cfg.leaderboard  # board A = the mean of the kept tasks: det
    assert cfg.default_hooks.checkpoint.save_best == 'leaderboard/A'


def test_leaderboard_json_has_per_class_scores(tmp_path):
    from projects.allinone.evaluation import Leaderboard
    board = Leaderboard(['det', 'seg'])
    metrics = {'det/coco/bbox_mAP_50': 0.5, 'det/coco/bbox_AP50_per_class': {'pl80': 0.75, 'i2': float('nan')},
               'seg/mIoU': 60.0, 'seg/IoU_per_class': {'road': 90.0, 'sky': 30.0}}
    metrics.update(board.score(metrics))
    board.report(metrics, str(tmp_path), step=10)
    text = open(tmp_path / 'leaderboard.json').read()
    assert 'NaN' not in text
    record = json.loads(text)
    assert record['per_class'] == {'det': {'metric': 'AP50', 'classes': {'pl80': 0.75, 'i2': None}},
                                   'seg': {'metric': 'IoU', 'classes': {'road': 0.9, 'sky': 0.3}}}
    assert not [k for k in record if 'per_class' in k and k != 'per_class']  # only under per_class
    assert record['leaderboard/A'] == pytest.approx((0.5 + 0.6) / 2)


def test_class_aware_sampling_of_the_cars(registered, challenge_tree, tmp_path):
    """The documented override builds mmdet's ClassAwareSampler on the cls loader: every class drawn
    equally often although the list holds them 8:4:2:1."""
    from mmengine.registry import DATA_SAMPLERS, DATASETS
    child = tmp_path / 'balanced.py'
    child.write_text(f"_base_ = ['{COMPETITION}']\n"
                     "train_dataloader = dict(cls=dict(sampler=dict(_delete_=True, type='ClassAwareSampler', "
                     "num_sample_class=1)))\n")
    cfg = Config.fromfile(str(child))
    assert cfg.train_dataloader.cls.sampler == dict(type='ClassAwareSampler', num_sample_class=1)
    ds_cfg = copy.deepcopy(cfg.train_dataloader.cls.dataset)
    ds_cfg.update(data_root=challenge_tree.train_root + 'cls/', pipeline=[])
    ds = DATASETS.build(ds_cfg)
    sampler = DATA_SAMPLERS.build(cfg.train_dataloader.cls.sampler, default_args=dict(dataset=ds, seed=0))
    labels = np.array(challenge_tree.cls_labels['train'])
    counts = np.bincount(labels, minlength=196)[[0, 17, 101, 195]]
    assert counts.max() >= 4 * counts.min()  # the list is long-tailed
    drawn = []
    for epoch in range(5):
        sampler.set_epoch(epoch)
        drawn += [labels[i] for i in sampler]
    per_class = np.bincount(drawn, minlength=196)[[0, 17, 101, 195]]
    assert per_class.tolist() == [len(drawn) // 4] * 4


@pytest.mark.slow
def test_leaderboard_b_trains_past_the_first_validation(demo_data, tmp_path):
    """A config that drops segmentation from a base with boards A/B and save_best='leaderboard/A' (as
    configs/allinone.py) stopped at the first validation with KeyError: 'leaderboard/A'. Run as a
    user would: --cfg-options data_root=... for the data, --max-iters for a short schedule."""
    cfg = tmp_path / 'board_b.py'
    cfg.write_text(f"_base_ = ['{osp.join(REPO, 'configs', 'allinone_demo.py')}']\n"
                   "model = dict(tasks=dict(seg=None))\n"
                   "train_dataloader = dict(seg=None)\nval_dataloader = dict(seg=None)\n"
                   "test_dataloader = val_dataloader\nval_evaluator = dict(seg=None)\ntest_evaluator = val_evaluator\n"
                   "val_cfg = dict(leaderboard=dict(boards=dict(A=['det', 'seg', 'cls'], B=['det', 'cls'])))\n"
                   "default_hooks = dict(checkpoint=dict(save_best='leaderboard/A', rule='greater'))\n")
    proc = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'train.py'), str(cfg), '--work-dir',
                           str(tmp_path / 'w'), '--max-iters', '2', '--cfg-options', f'data_root={demo_data}',
                           'model.tasks.det.test_cfg.score_thr=0.0'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "by 'leaderboard/B' instead" in log
    assert '--max-iters 2: schedule scaled' in log
    assert list((tmp_path / 'w').glob('best_leaderboard_B_iter_*.pth'))
    board = json.load(open(tmp_path / 'w' / 'leaderboard.json'))
    assert 'leaderboard/B' in board and 'leaderboard/A' not in board
    assert set(board['per_class']) == {'det'}  # per-class AP of the detection classes
