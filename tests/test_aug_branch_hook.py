"""AugBranchHook: branch schedules switch at their iteration (with loader workers too), survive resume,
and each task's share of samples per branch is logged."""
import copy
import os.path as osp
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.registry import HOOKS, TRANSFORMS
from mmengine.runner import Runner


@HOOKS.register_module(force=True)
class _BranchRecorder(Hook):
    """Records the branch of every training sample, per iteration and task."""
    seen = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        type(self).seen.append({t: [s.metainfo['aug_branch'] for s in b['data_samples']]
                                for t, b in data_batch.items()})


def _schedule_cfg(cfg, at_iter, workers=0):
    """The demo config with detection all mosaic until ``at_iter``, all photometric from it on."""
    cfg = copy.deepcopy(cfg)
    aug = next(t for t in cfg.train_dataloader.det.dataset.pipeline if t['type'] == 'MultiBranchAugment')
    assert aug['names'] == ['mosaic', 'photometric', 'scale_crop']
    aug['probs'] = [1.0, 0.0, 0.0]
    aug['schedule'] = [dict(at_iter=at_iter, probs=dict(mosaic=0.0, photometric=1.0))]
    cfg.custom_hooks = [dict(type='RandomStateHook'), dict(type='AugBranchHook', window=2),
                        dict(type='_BranchRecorder')]
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    for loader in cfg.train_dataloader.values():
        loader.num_workers = workers
        loader.persistent_workers = workers > 0
    return cfg


@pytest.mark.slow
def test_schedule_switches_at_its_iteration_and_shares_are_logged(registered, demo_cfg):
    """From iteration 3 on no detection sample takes the mosaic branch, even from the (persistent)
    loader workers that had prefetched batches with the old weights; the log shows the change and the
    shares. (Without workers: the resume test below.)"""
    cfg = _schedule_cfg(demo_cfg, at_iter=3, workers=2)
    cfg.train_cfg.max_iters = 5
    cfg.default_hooks.checkpoint.interval = 100
    _BranchRecorder.seen = []
    runner = Runner.from_cfg(cfg)
    runner.train()
    det = [it['det'] for it in _BranchRecorder.seen]
    assert det[:3] == [['mosaic'] * 2] * 3 and det[3:] == [['photometric'] * 2] * 2
    shares = runner.message_hub.get_scalar('train/aug.det.mosaic').data[0]
    np.testing.assert_allclose(shares, [1, 1, 1, 0.5, 0])  # over the last 2 iterations
    other = runner.message_hub.get_scalar('train/aug.seg.scale_crop').data[0]
    seg = [it['seg'] for it in _BranchRecorder.seen]
    window = [[b for j in range(max(0, i - 1), i + 1) for b in seg[j]] for i in range(5)]
    want = [w.count('scale_crop') / len(w) for w in window]
    np.testing.assert_allclose(other, want)
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert 'aug branches of det from iteration 3 (at_iter=3): mosaic 1.00 -> 0.00, photometric 0.00 -> 1.00' in log
    assert 'aug.det.mosaic: 0.5000' in log
    assert 'det: loader workers restarted' in log


@pytest.mark.slow
def test_resume_with_a_schedule_change_between_checkpoints(registered, demo_cfg):
    """4 iterations in one go == resumed from iteration 2 (before the switch at 3) == resumed from 3
    (after it), with num_workers=0; the checkpoints carry the branch weights of their iteration."""
    cfg = _schedule_cfg(demo_cfg, at_iter=3)
    cfg.randomness = dict(seed=0, deterministic=True)
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4)]
    cfg.train_cfg.max_iters = 4
    cfg.default_hooks.checkpoint.interval = 1
    cfg.default_hooks.checkpoint.max_keep_ckpts = 4
    _BranchRecorder.seen = []
    runner = Runner.from_cfg(copy.deepcopy(cfg))
    runner.train()
    want = {k: v.clone() for k, v in runner.model.state_dict().items()}
    full_branches = [it['det'] for it in _BranchRecorder.seen]
    assert full_branches == [['mosaic'] * 2] * 3 + [['photometric'] * 2]
    for at, mosaic in ((2, 1.0), (3, 0.0)):
        state = torch.load(osp.join(cfg.work_dir, f'iter_{at}.pth'), weights_only=True)['aug_branches']
        assert state['weights']['det'][0][0] == mosaic
        assert (['det', 0, 0] in state['applied']) == (at == 3)
    for start in (2, 3):
        resumed = copy.deepcopy(cfg)
        resumed.resume, resumed.load_from = True, osp.join(cfg.work_dir, f'iter_{start}.pth')
        resumed.work_dir = cfg.work_dir + f'_from{start}'
        _BranchRecorder.seen = []
        runner = Runner.from_cfg(resumed)
        runner.train()
        assert [it['det'] for it in _BranchRecorder.seen] == full_branches[start:]
        got = runner.model.state_dict()
        for k, v in want.items():
            torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=f'resumed from {start}: {k}')


def _stub_runner(dataset, it=0, max_iters=10, resume=False):
    from mmengine.logging import MessageHub
    return SimpleNamespace(train_loop=SimpleNamespace(dataloaders={'det': SimpleNamespace(dataset=dataset)}),
                           iter=it, max_iters=max_iters, hooks=[], _resume=resume,
                           message_hub=MessageHub.get_instance('aug-branch-test'))


def test_resume_rebuilds_the_schedule_and_checks_the_checkpoint(registered, tmp_path):
    """On resume the weights are the schedule's at the resume iteration; the checkpoint's copy agrees,
    or (config or max_iters changed since) the difference is logged; later entries apply on time."""
    from projects.allinone.engine.hooks import AugBranchHook

    def build():
        return TRANSFORMS.build(dict(type='MultiBranchAugment', names=['a', 'b'], probs=[0.5, 0.5], schedule=[
            dict(at_iter=2, probs=dict(a=0.0)), dict(at_frac=0.5, probs=dict(b=0.25))], branches=[[], []]))

    # the newest MMLogger is the 'current' one print_log writes to
    MMLogger.get_instance('aug-branch-resume', log_file=str(tmp_path / 'log.txt'))
    aug = build()
    hook = AugBranchHook()
    runner = _stub_runner(SimpleNamespace(pipeline=SimpleNamespace(transforms=[aug])), it=0)
    hook.before_train(runner)
    for it in range(4):  # an uninterrupted run up to iteration 4, then a checkpoint
        runner.iter = it
        hook.after_train_iter(runner, it)
    ckpt = {}
    hook.before_save_checkpoint(runner, ckpt)
    assert ckpt['aug_branches'] == dict(names={'det': [['a', 'b']]}, weights={'det': [[0.0, 0.5]]},
                                        applied=[['det', 0, 0]])
    for saved_weights, agrees in (([0.0, 0.5], True), ([0.7, 0.3], False)):
        aug = build()
        hook = AugBranchHook()
        runner = _stub_runner(SimpleNamespace(pipeline=SimpleNamespace(transforms=[aug])), it=4, resume=True)
        state = copy.deepcopy(ckpt)
        state['aug_branches']['weights']['det'][0] = saved_weights
        hook.after_load_checkpoint(runner, state)
        hook.before_train(runner)
        np.testing.assert_allclose(aug.weights, [0.0, 0.5])  # entry 0 (iteration 2) applied, entry 1 not yet
        runner.iter = 4
        hook.after_train_iter(runner, 4)  # iteration 5 comes next: entry 1 applies
        np.testing.assert_allclose(aug.weights, [0.0, 0.25])
        log = open(tmp_path / 'log.txt').read()
        assert ('the checkpoint has a 0.70, b 0.30, the config\'s schedule at iteration 4 gives a 0.00, '
                'b 1.00' in log) == (not agrees)
        assert 'aug branches of det restored at iteration 4: a 0.00, b 1.00' in log


def test_bad_schedules_are_named(registered):
    base = dict(type='MultiBranchAugment', names=['a', 'b'], branches=[[], []])
    for entry, msg in ((dict(at_iter=3, at_frac=0.5, probs=dict(a=0)), 'exactly one of at_iter'),
                       (dict(at_frac=1.5, probs=dict(a=0)), r'at_frac must lie in \[0, 1\]'),
                       (dict(at_iter=-1, probs=dict(a=0)), 'at_iter must be an integer >= 0'),
                       (dict(at_iter=3, probs=dict(c=0)), r"unknown branch\(es\) \['c'\]"),
                       (dict(at_iter=3, probs=dict(a=-1)), 'weights must be numbers >= 0'),
                       (dict(at_iter=3, prob=dict(a=0)), r"unknown keys \['prob'\]")):
        with pytest.raises(ValueError, match=msg):
            TRANSFORMS.build(dict(base, schedule=[entry]))
    from projects.allinone.engine.hooks import AugBranchHook
    aug = TRANSFORMS.build(dict(base, schedule=[dict(at_frac=0.5, probs=dict(a=0)), dict(at_iter=8, probs=dict(b=0))]))
    with pytest.raises(ValueError,
                       match=r"schedule entry \{'at_iter': 8.*would switch every branch of \['a', 'b'\] off"):
        AugBranchHook().before_train(_stub_runner(SimpleNamespace(pipeline=SimpleNamespace(transforms=[aug]))))


class _Versioned(torch.utils.data.Dataset):
    """Item i is ``version * 100 + i``: shows which copy of the dataset a worker holds."""
    version = 0

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return self.version * 100 + i


def test_restarted_workers_see_the_change_at_the_same_position():
    """TaskIterator.restart_workers: persistent workers that had prefetched batches start again with the
    main process's dataset, at the same position of the same epoch order."""
    from mmengine.dataset import DefaultSampler

    from projects.allinone.engine.loops import TaskIterator

    def loader(ds):  # shuffled from seed + epoch, as the project's loaders
        return torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, persistent_workers=True,
                                           prefetch_factor=2, sampler=DefaultSampler(ds, shuffle=True, seed=0))
    ref = TaskIterator(loader(_Versioned()))
    order = [next(ref).tolist() for _ in range(7)]  # into the second epoch
    ds = _Versioned()
    it = TaskIterator(loader(ds))
    got = [next(it).tolist() for _ in range(3)]
    ds.version = 1  # workers hold version 0 and have batches 4.. prefetched
    assert it.restart_workers()
    got += [next(it).tolist() for _ in range(4)]
    assert got[:3] == order[:3]
    assert got[3:] == [[100 + i for i in b] for b in order[3:]]
    assert not TaskIterator(torch.utils.data.DataLoader(ds, batch_size=2)).restart_workers()  # no workers
