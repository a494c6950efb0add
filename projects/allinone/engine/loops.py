"""Multi-dataset loops: one loader per task, one batch of every task per iteration."""
import logging
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.logging import print_log
from mmengine.runner import IterBasedTrainLoop
from mmengine.runner.amp import autocast
from mmengine.runner.base_loop import BaseLoop
from mmengine.runner.utils import calc_dynamic_intervals

from ..evaluation.leaderboard import Leaderboard
from ..evaluation.submission import SubmissionBuilder
from ..registry import LOOPS
from .hooks.random_state_hook import preserved_rng
from .model_wrappers.unwrap import unwrap_model


def _task_names(runner) -> List[str]:
    model = unwrap_model(runner.model)
    names = getattr(model, 'task_names', None)
    if names is None:
        raise TypeError(f'{type(model).__name__} has no task_names; the multi-task loops need AllInOneModel')
    return list(names)


def build_task_loaders(runner, loaders: Dict, section: str) -> 'OrderedDict[str, torch.utils.data.DataLoader]':
    """Build ``{task: DataLoader}`` and check it covers exactly the model's tasks, none empty."""
    if not isinstance(loaders, dict) or not loaders or 'dataset' in loaders:
        raise ValueError(f'{section} must be a dict {{task_name: dataloader config}} (one entry per task '
                         f'of model.tasks), got keys {list(loaders) if isinstance(loaders, dict) else loaders!r}')
    tasks = _task_names(runner)
    # a child config drops a task with `task=None` (in model.tasks and in each loader dict)
    loaders = {t: v for t, v in loaders.items() if v is not None or t in tasks}
    missing, unknown = [t for t in tasks if t not in loaders], [t for t in loaders if t not in tasks]
    if missing:
        raise ValueError(f'{section} has no entry for task(s) {missing}: every task of model.tasks '
                         f'{tasks} needs data (remove the task from model.tasks to train without it)')
    if unknown:
        raise ValueError(f'{section} has entries {unknown} that are not tasks of the model {tasks}')
    diff_rank_seed = runner._randomness_cfg.get('diff_rank_seed', False)
    out = OrderedDict()
    for task in tasks:  # model order: the order of the per-task passes
        cfg = loaders[task]
        try:
            loader = runner.build_dataloader(cfg, seed=runner.seed, diff_rank_seed=diff_rank_seed) \
                if isinstance(cfg, dict) else cfg
        except Exception as e:  # name the task and its files: the library's own message rarely does
            ds = cfg.get('dataset', {}) if isinstance(cfg, dict) else {}
            where = ', '.join(f'{k}={ds[k]}' for k in ('data_root', 'ann_file') if ds.get(k)) or 'see config'
            hint = ' (an empty annotation file?)' if 'at least one array' in str(e) else ''
            raise ValueError(f'{section}.{task}: could not build the dataset ({where}): '
                             f'{type(e).__name__}: {e}{hint}') from e
        if len(loader.dataset) == 0:
            ds = loader.dataset
            where = getattr(ds, 'ann_file', None) or getattr(ds, 'data_root', None) or type(ds).__name__
            raise ValueError(f'{section}.{task}: the dataset is empty ({where}); check its ann_file / '
                             'data_prefix, or generate the demo data with `python tools/make_demo_data.py`')
        out[task] = loader
    return out


class TaskIterator:
    """Endless iterator over one task's loader with its own epoch counter (``set_epoch`` per pass).

    Its position is ``(epoch, offset)``; ``seek`` restores it after a resume without replaying the
    earlier epochs (samplers shuffle from ``seed + epoch``, so the epoch is restored exactly and
    only the ``offset`` batches of the current epoch are drawn again).
    """

    def __init__(self, loader):
        self.loader = loader
        self.epoch = 0
        self.offset = 0
        self._it = None

    def _start_epoch(self):
        for obj in (getattr(self.loader, 'sampler', None), getattr(self.loader, 'batch_sampler', None)):
            if hasattr(obj, 'set_epoch'):
                obj.set_epoch(self.epoch)
        self._it = iter(self.loader)
        self.offset = 0

    def __next__(self):
        if self._it is None:
            self._start_epoch()
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch += 1
            self._start_epoch()
            batch = next(self._it)
        self.offset += 1
        return batch

    def seek(self, n_batches: int):
        """Position the iterator as if ``n_batches`` had been drawn from the start.

        The random states are left as they were (a resume restores them from the checkpoint), so
        redrawing the skipped batches does not shift the random numbers of the batches that follow.
        At an epoch boundary the next epoch is not started here: the uninterrupted run starts it
        (``iter(loader)`` draws its base seed from torch's RNG) only when it asks for the next batch,
        after the checkpoint, and so does the resumed one.
        """
        n = len(self.loader)
        epoch, skip = divmod(n_batches, n)
        if skip == 0:
            self.epoch, self._it, self.offset = epoch, None, 0
            return
        with preserved_rng():
            self.epoch = epoch
            self._start_epoch()
            for _ in range(skip):
                next(self._it)
        self.offset = skip

    def restart_workers(self) -> bool:
        """Start fresh loader workers at the current position, so that a change just made to the
        dataset's transforms in this process (a branch schedule) reaches them; workers hold a copy of
        the dataset from when they started. Batches the old workers had prefetched are dropped and the
        current epoch's batches so far are drawn again, random states kept (as ``seek``). Returns
        whether there was anything to restart (not without workers or before the first batch)."""
        if self._it is None or not getattr(self.loader, 'num_workers', 0):
            return False
        drawn = self.epoch * len(self.loader) + self.offset
        # a persistent-workers loader keeps its iterator (and workers) in `_iterator`; dropping it makes
        # the next `iter()` start new ones (what mmdet's PipelineSwitchHook does)
        self._it = None
        if getattr(self.loader, 'persistent_workers', False):
            self.loader._iterator = None
        self.seek(drawn)
        return True


@LOOPS.register_module()
class MultiTaskTrainLoop(IterBasedTrainLoop):
    """Iteration-based training over ``{task: dataloader}``: each iteration is one batch per task.

    ``train_dataloader`` in the config is ``dict(task_a=<loader cfg>, task_b=...)`` with its own
    dataset, sampler and batch size per task; each task's loader runs through its own epochs.
    ``self.dataloader`` is the first task's loader, for hooks that expect one.
    """

    def __init__(self, runner, dataloader: Dict, max_iters: int, val_begin: int = 1,
                 val_interval: int = 1000, dynamic_intervals: Optional[List[Tuple[int, int]]] = None):
        BaseLoop.__init__(self, runner, dataloader=None)  # the per-task loaders are built below
        self.dataloaders = build_task_loaders(runner, dataloader, 'train_dataloader')
        self.dataloader = next(iter(self.dataloaders.values()))
        self._max_iters = int(max_iters)
        if self._max_iters != max_iters or max_iters <= 0:
            raise ValueError(f'train_cfg.max_iters must be a positive integer, got {max_iters}')
        self._max_epochs, self._epoch, self._iter = 1, 0, 0
        self.val_begin, self.val_interval = val_begin, val_interval
        self.stop_training = False
        self.runner.visualizer.dataset_meta = {t: getattr(l.dataset, 'metainfo', None)
                                               for t, l in self.dataloaders.items()}
        self.iterators = OrderedDict((t, TaskIterator(l)) for t, l in self.dataloaders.items())
        self.dynamic_milestones, self.dynamic_intervals = calc_dynamic_intervals(
            self.val_interval, dynamic_intervals)
        sizes = ', '.join(f'{t}: {len(l.dataset)} samples / batch {l.batch_size}'
                          for t, l in self.dataloaders.items())
        print_log(f'multi-task training on {len(self.dataloaders)} tasks ({sizes})', logger='current')

    def validate(self) -> None:
        """Run the validation loop without moving the random states training continues from.

        The checkpoint of an iteration is written (``after_train_iter``) before that iteration's
        validation runs, and validation draws random numbers (each loader's ``iter()`` draws a base
        seed from torch's RNG, and anything else it runs may draw). A run resumed from that
        checkpoint does not repeat the validation, so without this the uninterrupted run would train
        on from random states the resumed one never sees.
        """
        with preserved_rng():
            self.runner.val_loop.run()

    def next_batch(self) -> Dict[str, dict]:
        return OrderedDict((t, next(it)) for t, it in self.iterators.items())

    def batches_drawn(self, iteration: int) -> int:
        """Batches each task loader has given after ``iteration`` iterations (the resume position)."""
        return iteration

    def validation_due(self) -> bool:
        """Validate after the iteration just run (every ``val_interval`` and at the end)."""
        return self._iter % self.val_interval == 0 or self._iter == self._max_iters

    def run(self):
        self.runner.call_hook('before_train')
        self.runner.call_hook('before_train_epoch')
        if self._iter > 0:
            print_log(f'resuming at iteration {self._iter}: repositioning each task loader '
                      '(epoch restored, partial epoch redrawn)', logger='current', level=logging.INFO)
            for it in self.iterators.values():
                it.seek(self.batches_drawn(self._iter))
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            self.run_iter(self.next_batch())
            self._decide_current_val_interval()
            if self.runner.val_loop is not None and self._iter >= self.val_begin and self.validation_due():
                self.validate()
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model


class _MultiTaskEvalLoop(BaseLoop):
    """Runs every task's loader through the model and the task's own evaluator, then scores."""
    mode = 'val'

    def __init__(self, runner, dataloader: Dict, evaluator: Dict, fp16: bool = False,
                 leaderboard: Optional[dict] = None, submission: Optional[dict] = None):
        BaseLoop.__init__(self, runner, dataloader=None)
        section = f'{self.mode}_dataloader'
        self.dataloaders = build_task_loaders(runner, dataloader, section)
        if isinstance(evaluator, dict):  # drop the entries of tasks dropped with `task=None`
            evaluator = {t: v for t, v in evaluator.items() if t in self.dataloaders or v is not None}
        if not isinstance(evaluator, dict) or set(evaluator) != set(self.dataloaders):
            got = list(evaluator) if isinstance(evaluator, dict) else repr(evaluator)
            raise ValueError(f'{self.mode}_evaluator must be a dict with one evaluator per task '
                             f'{list(self.dataloaders)}, got {got}')
        # a task whose evaluator is None is format-only (unlabeled test images): predicted and
        # exported with the submission, not scored
        self.evaluators = OrderedDict()
        for task, loader in self.dataloaders.items():
            if evaluator[task] is None:
                self.evaluators[task] = None
                continue
            ev = runner.build_evaluator(evaluator[task])
            ev.dataset_meta = getattr(loader.dataset, 'metainfo', None)
            self.evaluators[task] = ev
        self.dataloader = next(iter(self.dataloaders.values()))
        self.current_task = None  # the task whose loader runs (hooks and the log processor read it)
        self.fp16 = fp16
        scored = [t for t, ev in self.evaluators.items() if ev is not None]
        self.leaderboard = self._build_leaderboard(scored, dict(leaderboard or {})) if scored else None
        # submission=dict(out='sub.json', keys=dict(det='dec')): also write the challenge file
        self.submission = dict(submission) if submission and submission.get('out') else None
        self._builder = None

    @staticmethod
    def _build_leaderboard(scored: List[str], cfg: dict) -> Leaderboard:
        """The leaderboard over the scored tasks; a board naming a format-only task is left out."""
        boards = cfg.pop('boards', None)
        if boards is not None:
            kept = OrderedDict((b, ts) for b, ts in boards.items() if all(t in scored for t in ts))
            for b in set(boards) - set(kept):
                print_log(f'leaderboard board {b!r} needs task(s) without labels in this run: not scored',
                          logger='current', level=logging.WARNING)
            boards = kept or None
        primary = {t: v for t, v in (cfg.pop('primary', None) or {}).items() if t in scored}
        return Leaderboard(scored, primary=primary, boards=boards, **cfg)

    def run(self) -> dict:
        runner = self.runner
        runner.call_hook(f'before_{self.mode}')
        runner.call_hook(f'before_{self.mode}_epoch')
        runner.model.eval()
        metrics = OrderedDict()
        self._builder = SubmissionBuilder(self.submission.get('keys')) if self.submission else None
        for task, loader in self.dataloaders.items():
            self.dataloader, self.current_task = loader, task  # progress in the log is per task
            evaluator = self.evaluators[task]
            for idx, batch in enumerate(loader):
                self.run_iter(task, idx, batch)
            if evaluator is None:
                print_log(f'{self.mode}: task {task!r} has no labels (format only): '
                          f'{len(loader.dataset)} images predicted, not scored', logger='current')
                continue
            for k, v in evaluator.evaluate(len(loader.dataset)).items():
                metrics[f'{task}/{k}'] = v
        self.current_task = None
        if self.leaderboard is not None:
            metrics.update(self.leaderboard.score(metrics))
        if self._builder is not None:  # data parallel: every rank's predictions, each image once
            self._builder.gather({t: len(l.dataset) for t, l in self.dataloaders.items()})
        if runner.rank == 0:
            if self.leaderboard is not None:
                self.leaderboard.report(metrics, runner.work_dir, step=getattr(runner, 'iter', 0), mode=self.mode)
            if self._builder is not None:
                self._builder.dump(self.submission['out'])
                print_log(f"submission written to {self.submission['out']}", logger='current')
        runner.call_hook(f'after_{self.mode}_epoch', metrics=metrics)
        runner.call_hook(f'after_{self.mode}')
        return metrics

    @torch.no_grad()
    def run_iter(self, task: str, idx: int, batch: dict):
        runner = self.runner
        runner.call_hook(f'before_{self.mode}_iter', batch_idx=idx, data_batch=batch)
        step = runner.model.val_step if self.mode == 'val' else runner.model.test_step
        with autocast(enabled=self.fp16):
            outputs = step({task: batch})
        if self._builder is not None:
            self._builder.add(task, outputs, self.dataloaders[task].dataset)
        if self.evaluators[task] is not None:
            self.evaluators[task].process(data_samples=outputs, data_batch=batch)
        runner.call_hook(f'after_{self.mode}_iter', batch_idx=idx, data_batch=batch, outputs=outputs)


@LOOPS.register_module()
class MultiTaskValLoop(_MultiTaskEvalLoop):
    """Validation over ``{task: loader}`` with ``{task: evaluator}``; adds leaderboard scores."""
    mode = 'val'


@LOOPS.register_module()
class MultiTaskTestLoop(_MultiTaskEvalLoop):
    """Test over ``{task: loader}`` with ``{task: evaluator}``; adds leaderboard scores."""
    mode = 'test'
