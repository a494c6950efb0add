"""Resume reproduces the uninterrupted run bit for bit, with a stateful method and with a validation
(and its random draws) on the checkpoint iteration; loader positions at epoch boundaries."""
import copy
import os.path as osp

import pytest
import torch
from mmengine.runner import Runner
from test_aggregators_contract import assert_same

from projects.allinone.engine.loops import TaskIterator


@pytest.fixture
def one_thread():
    """On a machine whose cores other jobs share, a second OpenMP thread spends most of its time
    waiting (measured: 45 s instead of 1 s per demo iteration at a load of 9 on 2 cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_resume_with_validation_at_the_checkpoint_and_a_stateful_method_is_bit_identical(registered, demo_cfg,
                                                                                       one_thread):
    """3 iterations, checkpoint and validation at 2 (the validation runs after the checkpoint is
    written), MaxGNR solving its weights every step from statistics kept in its state. Resumed from
    the iteration-2 checkpoint, the run ends with the same weights, optimizer and aggregator state,
    bit for bit."""
    cfg = copy.deepcopy(demo_cfg)
    cfg.randomness = dict(seed=0, deterministic=True)
    cfg.train_cfg.update(max_iters=3, val_interval=2)
    cfg.default_hooks.checkpoint.interval = 2
    cfg.optim_wrapper.aggregator = dict(type='MaxGNRAggregator', warmup=2, update_interval=1, sketch_dim=256)
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=3)]
    for loader in cfg.val_dataloader.values():  # a few images per task: validation is not what is tested
        loader.dataset.indices = 3

    full = copy.deepcopy(cfg)
    full.work_dir = cfg.work_dir + '_full'
    full.experiment_name = 'full'
    runner = Runner.from_cfg(full)
    runner.train()
    want = {k: v.clone() for k, v in runner.model.state_dict().items()}
    del runner

    resumed = copy.deepcopy(cfg)
    resumed.resume, resumed.load_from = True, osp.join(full.work_dir, 'iter_2.pth')
    resumed.experiment_name = 'resumed'
    runner = Runner.from_cfg(resumed)
    runner.train()
    assert runner.iter == 3
    got = runner.model.state_dict()
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    a = torch.load(osp.join(full.work_dir, 'iter_3.pth'), weights_only=True)
    b = torch.load(osp.join(cfg.work_dir, 'iter_3.pth'), weights_only=True)
    assert a['optimizer']['aggregator']['step'] == 3  # MaxGNR's state moved (solves at steps 2 and 3)
    assert_same(b['optimizer'], a['optimizer'])


def test_resume_at_an_epoch_boundary_draws_like_the_uninterrupted_run():
    """The uninterrupted run starts the next epoch (``iter(loader)`` draws a base seed from torch's
    RNG) when it asks for the batch after the checkpoint; the resumed one must too."""
    loader = torch.utils.data.DataLoader(list(range(6)), batch_size=2, shuffle=True)  # 3 batches per epoch
    torch.manual_seed(0)
    it = TaskIterator(loader)
    for _ in range(6):  # two whole epochs, then a checkpoint
        next(it)
    state = torch.get_rng_state()
    want = [next(it).tolist() for _ in range(2)] + [torch.rand(3)]
    torch.set_rng_state(state)  # what RandomStateHook restores
    other = TaskIterator(loader)
    other.seek(6)
    got = [next(other).tolist() for _ in range(2)] + [torch.rand(3)]
    assert got[:2] == want[:2] and torch.equal(got[2], want[2])
    assert (other.epoch, other.offset) == (it.epoch, it.offset) == (2, 2)
