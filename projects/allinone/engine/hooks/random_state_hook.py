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
    """

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['random_state'] = get_rng_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not getattr(runner, '_resume', False):
            return  # load_from (fine-tuning, testing): keep this run's own seed
        state = checkpoint.get('random_state')
        if state is None:
            print_log('the checkpoint holds no random state (written without RandomStateHook): the resumed '
                      'run will not repeat the random draws of the original one', logger='current',
                      level=logging.WARNING)
            return
        set_rng_state(state)
