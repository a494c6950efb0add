"""Weight EMA (mmengine's EMAHook, as mmdet configs use it) with the multi-task loop: validation and
checkpoints with the averaged weights, the source weights kept for training, resume, and a test run
on the checkpoint scoring what validation scored."""
import copy
import json
import os.path as osp

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

MOMENTUM = 0.5


def test_tied_weight_is_averaged_once():
    """A weight shared by two modules (as RTMDet's head convs are across levels) appears twice in
    state_dict(); mmengine's averaged model then moves it twice per step, the Tied* types once."""
    from mmengine.model import ExponentialMovingAverage
    from torch import nn

    from projects.allinone.engine.ema import TiedExpMomentumEMA, TiedExponentialMovingAverage
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.BatchNorm1d(2))
    model[1].weight = model[0].weight
    start = model[0].weight.detach().clone()
    results = {}
    for cls in (ExponentialMovingAverage, TiedExponentialMovingAverage):
        ema = cls(model, momentum=MOMENTUM, update_buffers=True)
        ema.update_parameters(model)                    # the first update copies
        with torch.no_grad():
            model[0].weight.add_(1.0)
        ema.update_parameters(model)
        results[cls.__name__] = ema.module[0].weight.detach().clone()
        with torch.no_grad():
            model[0].weight.sub_(1.0)
    torch.testing.assert_close(results['TiedExponentialMovingAverage'], start + MOMENTUM)
    torch.testing.assert_close(results['ExponentialMovingAverage'], start + 0.75)  # moved twice: the defect
    ema = TiedExpMomentumEMA(model, momentum=0.1, gamma=100, update_buffers=True)
    assert len(ema.avg_parameters) == len(model.state_dict()) - 1  # the alias left out, buffers kept


def with_ema(cfg, **kw):
    cfg = copy.deepcopy(cfg)
    cfg.custom_hooks = list(cfg.custom_hooks) + [dict(
        type='EMAHook', ema_type='TiedExponentialMovingAverage', momentum=MOMENTUM, update_buffers=True, priority=49,
        **kw)]
    return cfg


class Probe(Hook):
    """Records the model's parameters after every training iteration and when validation starts."""
    priority = 'LOWEST'

    def __init__(self):
        self.after_iter, self.at_val = [], []

    @staticmethod
    def _params(runner):
        return {n: p.detach().clone() for n, p in runner.model.named_parameters()}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.after_iter.append(self._params(runner))

    def before_val_epoch(self, runner):
        self.at_val.append(self._params(runner))


def expected_ema(history):
    """mmengine's ExponentialMovingAverage: the first update copies, then ema += m * (p - ema)."""
    ema = {n: p.clone() for n, p in history[0].items()}
    for params in history[1:]:
        for n, p in params.items():
            ema[n] += MOMENTUM * (p - ema[n])
    return ema


def assert_same(got, want, what):
    assert set(got) >= set(want), what
    for n, v in want.items():
        torch.testing.assert_close(got[n], v, rtol=1e-5, atol=1e-6, msg=f'{what}: {n}')


@pytest.mark.slow
def test_validation_and_checkpoint_use_ema_weights_and_test_scores_the_same(registered, demo_cfg):
    cfg = with_ema(demo_cfg)
    runner = Runner.from_cfg(cfg)
    probe = Probe()
    runner.register_hook(probe)
    runner.train()
    assert len(probe.after_iter) == 4 and len(probe.at_val) == 1
    ema = expected_ema(probe.after_iter)
    last = probe.after_iter[-1]
    assert any(not torch.allclose(ema[n], last[n]) for n in ema), 'the EMA must differ from the last weights'
    assert_same(probe.at_val[0], ema, 'validation weights')                 # validated with the EMA
    assert_same({n: p for n, p in runner.model.named_parameters()}, last, 'training weights after validation')
    ckpt = torch.load(osp.join(cfg.work_dir, 'iter_4.pth'), weights_only=True)
    assert_same(ckpt['state_dict'], ema, 'checkpoint state_dict')             # deployable = averaged
    assert_same({k[len('module.'):]: v for k, v in ckpt['ema_state_dict'].items() if k.startswith('module.')},
                last, 'checkpoint ema_state_dict (the source weights, for resume)')

    # tools/test.py on that checkpoint (no EMA hook in the test config) scores what validation scored
    val_board = json.load(open(osp.join(cfg.work_dir, 'leaderboard.json')))
    test_cfg = copy.deepcopy(demo_cfg)
    test_cfg.work_dir = cfg.work_dir + '_test'
    test_cfg.load_from = osp.join(cfg.work_dir, 'iter_4.pth')
    Runner.from_cfg(test_cfg).test()
    test_board = json.load(open(osp.join(test_cfg.work_dir, 'leaderboard_test.json')))
    for key in ('seg/mIoU', 'cls/accuracy/top1', 'leaderboard/A'):
        assert test_board[key] == pytest.approx(val_board[key]), key


@pytest.mark.slow
def test_resume_restores_the_ema(registered, demo_cfg):
    """4 iterations == 2, stop, resume, 2 more: the training weights and the EMA both."""
    cfg = with_ema(demo_cfg)
    cfg.randomness = dict(seed=0, deterministic=True)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.default_hooks.checkpoint.interval = 2
    full = copy.deepcopy(cfg)
    full.work_dir = cfg.work_dir + '_full'
    Runner.from_cfg(full).train()
    want = torch.load(osp.join(full.work_dir, 'iter_4.pth'), weights_only=True)

    half = copy.deepcopy(cfg)
    half.train_cfg.max_iters = 2
    Runner.from_cfg(half).train()
    resumed = copy.deepcopy(cfg)
    resumed.resume, resumed.load_from = True, osp.join(cfg.work_dir, 'iter_2.pth')
    runner = Runner.from_cfg(resumed)
    runner.train()
    got = torch.load(osp.join(cfg.work_dir, 'iter_4.pth'), weights_only=True)
    assert int(got['ema_state_dict']['steps']) == int(want['ema_state_dict']['steps']) == 4
    for part in ('state_dict', 'ema_state_dict'):
        assert_same({k: v for k, v in got[part].items() if v.is_floating_point()},
                    {k: v for k, v in want[part].items() if v.is_floating_point()}, part)
