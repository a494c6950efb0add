"""Make a resumed run draw the same random numbers as the uninterrupted one."""
import logging
import random
from contextlib import contextmanager

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log

from ...registry import HOOKS


def get_rng_state() -> dict:
    state = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


@contextmanager
def preserved_rng():
    """Run a block without changing the python / numpy / torch random states."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Store the python, numpy and torch (CPU, CUDA) random states in every checkpoint and restore
    them on ``--resume``.

    mmengine saves model, optimizer, schedulers and the message hub but no random state, so after a
    resume dropout masks, drop-path and the augmentations drawn in the main process differ from the
    uninterrupted run. With this hook (and ``num_workers=0``, where transforms draw from the main
    process) a resumed run reproduces the uninterrupted one exactly; with loader workers the worker
    seeds of the interrupted epoch still differ.

    Data parallel: the ranks' random states drift apart (each augments its own samples), but only
    rank 0 writes the checkpoint. So in an iteration where ``CheckpointHook`` will save, every rank's
    state is gathered first (``after_train_iter``, ordered just before ``CheckpointHook``) and stored
    as ``random_state_per_rank``; a resume with the same number of ranks gives each rank its own.
    """

    # after_train_iter: after ParamSchedulerHook (LOW = 70), before CheckpointHook (VERY_LOW = 90)
    priority = 85

    def __init__(self):
        self._rank_states = None  # (iteration the next checkpoint will carry, [state of each rank])

    @staticmethod
    def _checkpoint_due(runner) -> bool:
        """Whether a ``CheckpointHook`` of ``runner`` saves in this ``after_train_iter``."""
        from mmengine.hooks import CheckpointHook
        for hook in runner.hooks:
            if isinstance(hook, CheckpointHook) and not hook.by_epoch:
                if (hook.every_n_train_iters(runner, hook.interval, getattr(hook, 'save_begin', 0))
                        or (getattr(hook, 'save_last', True) and hook.is_last_train_iter(runner))):
                    return True
        return False

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if runner.world_size > 1 and self._checkpoint_due(runner):
            from mmengine.dist import all_gather_object
            self._rank_states = (runner.iter + 1, all_gather_object(get_rng_state()))

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['random_state'] = get_rng_state()
        if self._rank_states is not None and self._rank_states[0] == checkpoint.get('meta', {}).get('iter'):
            checkpoint['random_state_per_rank'] = self._rank_states[1]

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not getattr(runner, '_resume', False):
            return  # load_from (fine-tuning, testing): keep this run's own seed
        state = checkpoint.get('random_state')
        per_rank = checkpoint.get('random_state_per_rank')
        if per_rank is not None and len(per_rank) == runner.world_size:
            state = per_rank[runner.rank]
        elif runner.world_size > 1 and state is not None:
            print_log(f'the checkpoint holds no random state per rank for {runner.world_size} ranks: every '
                      "rank resumes with rank 0's; the resumed run will not repeat the other ranks' random "
                      'draws', logger='current', level=logging.WARNING)
        if state is None:
            print_log('the checkpoint holds no random state (written without RandomStateHook): the resumed '
                      'run will not repeat the random draws of the original one', logger='current',
                      level=logging.WARNING)
            return
        set_rng_state(state)
