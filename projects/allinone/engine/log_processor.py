"""mmengine's log processor with headers that say which task's loader the numbers count."""
import re
from typing import Tuple

from mmdet.registry import LOG_PROCESSORS
from mmengine.runner import LogProcessor

_EVAL_HEADER = re.compile(r'^(Iter|Epoch)\((val|test)\) ((?:\[\d+\])?)\[\s*\d+/\d+\]')


def _eval_loop(runner, mode: str):
    return runner.val_loop if mode == 'val' else runner.test_loop


@LOG_PROCESSORS.register_module()
class MultiTaskLogProcessor(LogProcessor):
    """``LogProcessor`` for the multi-task validation and test loops (one loader per task).

    mmengine's headers count the batches of the loop's ``dataloader``: during evaluation that is
    the running task's loader, and in the summary line after it the last task's, whatever the other
    tasks ran. Here each evaluation line names its task (``Iter(val) det [ 5/13]``) and the summary
    line every task's batches (``Iter(val) [det 13, seg 20, cls 1]``). Training lines, and loops
    without per-task loaders, are mmengine's.
    """

    def get_log_after_iter(self, runner, batch_idx: int, mode: str) -> Tuple[dict, str]:
        tag, log_str = super().get_log_after_iter(runner, batch_idx, mode)
        if mode != 'train':
            task = getattr(_eval_loop(runner, mode), 'current_task', None)
            if task is not None:
                log_str = re.sub(r'^((?:Iter|Epoch)\(\w+\) )', lambda m: f'{m.group(1)}{task} ', log_str, count=1)
        return tag, log_str

    def get_log_after_epoch(self, runner, batch_idx: int, mode: str,
                            with_non_scalar: bool = False) -> Tuple[dict, str]:
        tag, log_str = super().get_log_after_epoch(runner, batch_idx, mode, with_non_scalar)
        loaders = getattr(_eval_loop(runner, mode), 'dataloaders', None)
        if isinstance(loaders, dict) and loaders:
            counts = ', '.join(f'{t} {len(loader)}' for t, loader in loaders.items())
            log_str = _EVAL_HEADER.sub(lambda m: f'{m.group(1)}({m.group(2)}) {m.group(3)}[{counts}]', log_str,
                                       count=1)
        return tag, log_str
