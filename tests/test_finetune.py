"""Leaderboard B's finetune mode: one task of an AllInOne checkpoint, trained on new data."""
import copy
import json
import os.path as osp

import pytest
import torch

from conftest import REPO, retarget


@pytest.mark.slow
def test_finetune_config_loads_the_multitask_checkpoint_and_trains_one_task(demo_cfg, demo_data, tmp_path, registered):
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.runner import Runner

    # an AllInOne (three-task) checkpoint, as `make demo` leaves one
    full = MODELS.build(copy.deepcopy(demo_cfg.model))
    ckpt = tmp_path / 'allinone.pth'
    torch.save(dict(state_dict=full.state_dict(), meta=dict()), ckpt)

    cfg = Config.fromfile(osp.join(REPO, 'configs', 'allinone_demo_finetune.py'))
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator', 'test_evaluator'):
        cfg[key] = retarget(copy.deepcopy(cfg[key]), 'data/demo_b/', demo_data.rstrip('/') + '/')
    cfg.load_from = str(ckpt)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.train_cfg.max_iters = 2
    cfg.train_cfg.val_interval = 2
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
    cfg.train_dataloader.det.batch_size = 2
    cfg.default_hooks.checkpoint.interval = 2
    cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]
    runner = Runner.from_cfg(cfg)
    model = runner.model
    assert model.task_names == ['det'] and set(runner.train_loop.dataloaders) == {'det'}
    runner.load_or_resume()
    state = full.state_dict()
    for name, value in model.state_dict().items():  # backbone and detection branch come from it
        assert torch.equal(value, state[name]), name
    before = model.backbone.conv1.weight.detach().clone()
    runner.train()
    assert not torch.equal(before, model.backbone.conv1.weight)
    board = json.load(open(osp.join(cfg.work_dir, 'leaderboard.json')))
    assert set(k for k in board if k.startswith('leaderboard/')) == {'leaderboard/det', 'leaderboard/B'}
    assert board['leaderboard/B'] == board['leaderboard/det']
    # the backbone learns at a tenth of the head's rate
    groups = {g['lr'] for g in runner.optim_wrapper.optimizer.param_groups}
    assert groups == {5e-4, 5e-5}


def test_a_task_set_to_none_is_dropped_everywhere(demo_cfg, registered):
    from mmdet.registry import MODELS
    cfg = copy.deepcopy(demo_cfg.model)
    cfg.tasks.seg = None
    model = MODELS.build(cfg)
    assert model.task_names == ['det', 'cls']
    cfg.tasks = dict(det=None, seg=None, cls=None)
    with pytest.raises(ValueError, match='every task is None'):
        MODELS.build(cfg)
