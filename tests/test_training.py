"""The multi-dataset loop, validation/leaderboard, checkpoints and resume, through mmengine's Runner."""
import copy
import json
import os.path as osp

import pytest
import torch
from mmengine.runner import Runner

from projects.allinone.engine.loops import TaskIterator


def make_runner(cfg, name=None):
    cfg = copy.deepcopy(cfg)
    if name:
        cfg.experiment_name = name
    return Runner.from_cfg(cfg)


@pytest.mark.slow
def test_train_validate_and_leaderboard(registered, demo_cfg):
    runner = make_runner(demo_cfg)
    runner.train()
    assert runner.iter == 4
    scalars = runner.message_hub.log_scalars
    for task in ('det', 'seg', 'cls'):
        assert f'train/{task}.loss' in scalars, 'per-task loss is logged'
        assert f'train/{task}.grad_norm' in scalars, 'per-task shared gradient norm is logged'
    board = json.load(open(osp.join(demo_cfg.work_dir, 'leaderboard.json')))
    for key in ('seg/mIoU', 'cls/accuracy/top1', 'leaderboard/det', 'leaderboard/A'):
        assert key in board
    # after 4 iterations the detector may have no detection at all: CocoMetric then reports nothing
    det = board.get('det/coco/bbox_mAP_50', 0.0)
    assert board['leaderboard/det'] == det
    expect = (det + board['seg/mIoU'] / 100 + board['cls/accuracy/top1'] / 100) / 3
    assert board['leaderboard/A'] == pytest.approx(expect)
    assert osp.exists(osp.join(demo_cfg.work_dir, 'leaderboard.png'))
    assert osp.exists(osp.join(demo_cfg.work_dir, 'iter_4.pth'))


def test_checkpoint_loads_with_safe_loading(registered, tmp_path):
    import numpy as np
    from mmengine.logging import HistoryBuffer
    buf = HistoryBuffer()
    buf.update(np.float64(1.5))
    path = tmp_path / 'c.pth'
    torch.save(dict(message_hub=dict(log_scalars={'x': buf}), meta=dict(a=np.arange(3), s=np.int64(2))), path)
    ckpt = torch.load(path, weights_only=True)
    loaded = ckpt['message_hub']['log_scalars']['x']
    assert loaded.current() == 1.5 and loaded.mean() == 1.5  # statistics methods work after loading
    # nothing beyond the allow-list is needed (in particular not builtins.getattr)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []


@pytest.mark.slow
def test_resume_continues_the_same_run(registered, demo_cfg):
    """4 iterations in one go == 2 iterations, stop, resume, 2 more.

    Bit-for-bit up to float tolerance, with the random multi-branch augmentations and dropout on:
    the checkpoint restores the loaders' positions and (RandomStateHook) the random states.
    """
    cfg = copy.deepcopy(demo_cfg)
    cfg.randomness = dict(seed=0, deterministic=True)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4)]

    full = copy.deepcopy(cfg)
    full.work_dir = cfg.work_dir + '_full'
    runner = make_runner(full, 'full')
    runner.train()
    want = {k: v.clone() for k, v in runner.model.state_dict().items()}

    half = copy.deepcopy(cfg)
    half.train_cfg.max_iters = 2
    make_runner(half, 'half').train()
    ckpt = osp.join(cfg.work_dir, 'iter_2.pth')
    # the checkpoint holds the run state and loads with torch's safe loading
    state = torch.load(ckpt, weights_only=True)
    assert state['meta']['iter'] == 2 and 'optimizer' in state

    resumed = copy.deepcopy(cfg)
    resumed.resume, resumed.load_from = True, ckpt
    runner = make_runner(resumed, 'resumed')
    runner.train()
    assert runner.iter == 4
    got = runner.model.state_dict()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_task_iterator_has_independent_epochs_and_seeks():
    loader = torch.utils.data.DataLoader(list(range(5)), batch_size=2)  # 3 batches per epoch
    it = TaskIterator(loader)
    seq = [next(it).tolist() for _ in range(7)]
    assert seq[:3] == [[0, 1], [2, 3], [4]] and seq[3:6] == seq[:3]
    assert it.epoch == 2 and it.offset == 1
    other = TaskIterator(loader)
    other.seek(4)
    assert (other.epoch, other.offset) == (1, 1)
    assert [next(other).tolist() for _ in range(3)] == seq[4:7]


def test_missing_task_data_is_a_config_error(registered, demo_cfg):
    cfg = copy.deepcopy(demo_cfg)
    cfg.train_dataloader.pop('cls')
    with pytest.raises(ValueError, match=r"train_dataloader has no entry for task\(s\) \['cls'\]"):
        make_runner(cfg).train()


def test_empty_dataset_is_a_config_error(registered, demo_cfg, tmp_path):
    empty = tmp_path / 'empty.json'
    empty.write_text(json.dumps(dict(images=[], annotations=[], categories=[dict(id=1, name='prohibitory')])))
    cfg = copy.deepcopy(demo_cfg)
    cfg.train_dataloader.det.dataset.ann_file = str(empty)
    with pytest.raises(ValueError, match=r'train_dataloader.det: .*empty.json.*no usable image'):
        make_runner(cfg).train()


def test_missing_data_names_the_path(registered, demo_cfg):
    from projects.allinone.utils import check_data, missing_data
    cfg = copy.deepcopy(demo_cfg)
    assert missing_data(cfg, 'train') == []
    cfg.train_dataloader.seg.dataset.data_root = '/nonexistent/seg/'
    with pytest.raises(FileNotFoundError, match=r'train_dataloader.seg.dataset.data_root: /nonexistent/seg/'):
        check_data(cfg, 'train')
