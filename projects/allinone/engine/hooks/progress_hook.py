"""A progress bar over training iterations and over every task's evaluation batches."""
import sys

from mmengine.hooks import Hook

from ...registry import HOOKS


def progress_bar(total: int, desc: str, unit: str, initial: int = 0, file=None):
    """A tqdm bar that updates at most once a second on a terminal and every 30 s in a log file."""
    from tqdm import tqdm
    file = file or sys.stderr
    tty = hasattr(file, 'isatty') and file.isatty()
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=file, dynamic_ncols=tty,
                mininterval=1.0 if tty else 30.0, leave=True)


@HOOKS.register_module()
class ProgressBarHook(Hook):
    """A tqdm bar on rank 0: training iterations, and the batches of every task of a val/test loop.

    The evaluation bar runs over all tasks' batches (one loader per task in the multi-task loops)
    and names the task running. Between mmengine's log lines it tells how far a long run is; the
    bar goes to stderr, the log to stdout.

    Args:
        train, val, test: which phases get a bar.
    """
    priority = 'VERY_LOW'

    def __init__(self, train: bool = True, val: bool = False, test: bool = True):
        self.phases = dict(train=train, val=val, test=test)
        self._train_bar = None
        self._eval_bar = None

    # training
    def before_train(self, runner) -> None:
        if self.phases['train'] and runner.rank == 0:
            self._train_bar = progress_bar(runner.max_iters, 'train', 'iter', initial=runner.iter)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self._train_bar is not None:
            self._train_bar.update(runner.iter + 1 - self._train_bar.n)

    def after_train(self, runner) -> None:
        if self._train_bar is not None:
            self._train_bar.close()
            self._train_bar = None

    # validation / test: one bar over every task's batches
    @staticmethod
    def _loop(runner, mode):
        return runner.val_loop if mode == 'val' else runner.test_loop

    def _before_eval(self, runner, mode):
        if self.phases[mode] and runner.rank == 0:
            loop = self._loop(runner, mode)
            loaders = getattr(loop, 'dataloaders', None) or {'': loop.dataloader}
            self._eval_bar = progress_bar(sum(len(loader) for loader in loaders.values()), mode, 'batch')

    def _after_eval_iter(self, runner, mode):
        if self._eval_bar is not None:
            task = getattr(self._loop(runner, mode), 'current_task', None)
            if task and self._eval_bar.desc != f'{mode} {task}':
                self._eval_bar.set_description(f'{mode} {task}', refresh=False)
            self._eval_bar.update(1)

    def _after_eval(self):
        if self._eval_bar is not None:
            self._eval_bar.close()
            self._eval_bar = None

    def before_val(self, runner) -> None:
        self._before_eval(runner, 'val')

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._after_eval_iter(runner, 'val')

    def after_val(self, runner) -> None:
        self._after_eval()

    def before_test(self, runner) -> None:
        self._before_eval(runner, 'test')

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._after_eval_iter(runner, 'test')

    def after_test(self, runner) -> None:
        self._after_eval()
