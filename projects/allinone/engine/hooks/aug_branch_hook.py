"""Drive the multi-branch augmentation during training: branch schedules and per-branch shares."""
import logging
import math
from collections import Counter, deque
from typing import Dict, List, Optional, Tuple

import numpy as np
from mmengine.hooks import Hook
from mmengine.logging import print_log

from ...datasets.transforms.multi_branch import MultiBranchAugment, nested_transforms
from ...registry import HOOKS


def branch_augments(dataset) -> List[MultiBranchAugment]:
    """Every ``MultiBranchAugment`` in the pipelines of ``dataset``, through dataset wrappers
    (``dataset`` / ``datasets``: MultiImageMixDataset, ConcatDataset, ...) and nested transforms."""
    found, seen = [], set()

    def walk_transform(t):
        if id(t) in seen:
            return
        seen.add(id(t))
        if isinstance(t, MultiBranchAugment):
            found.append(t)
            for branch in t.branches:
                walk_transform(branch)
            return
        for inner in nested_transforms(t):
            walk_transform(inner)

    def walk_dataset(ds):
        if ds is None or id(ds) in seen:
            return
        seen.add(id(ds))
        pipeline = getattr(ds, 'pipeline', None)
        for t in (pipeline if isinstance(pipeline, (list, tuple)) else [pipeline] if pipeline is not None else []):
            walk_transform(t)
        walk_dataset(getattr(ds, 'dataset', None))
        for sub in getattr(ds, 'datasets', None) or []:
            walk_dataset(sub)

    walk_dataset(dataset)
    return found


@HOOKS.register_module()
class AugBranchHook(Hook):
    """Applies the ``schedule`` of every ``MultiBranchAugment`` in the training pipelines, and logs
    the share of samples that took each branch.

    Schedules: an entry ``dict(at_iter=N | at_frac=f, probs={branch: weight})`` of a task's
    ``MultiBranchAugment`` takes effect for the batches of iteration N (``ceil(f * max_iters)``) on.
    It is applied after iteration N - 1 in this process; a loader with workers is then restarted at
    its position (``TaskIterator.restart_workers``: workers hold a copy of the dataset, and batches
    they prefetched with the old weights are dropped), so the switch is exact with workers too. Each
    change is logged. The branch weights and the entries applied are saved in every checkpoint. On
    ``--resume`` the weights are rebuilt as the schedule has them at the resume iteration (as mmdet's
    switch hooks do, from the config) and checked against the checkpoint's: they agree unless the
    config or ``max_iters`` (for ``at_frac``) changed, which is then logged as a warning naming both.

    Shares: with ``'aug_branch'`` among the Pack transform's ``meta_keys``, every iteration updates
    ``aug.<task>.<branch>``: the share of that task's samples that took the branch over the last
    ``window`` iterations (default: the LoggerHook interval, so each log line shows the share since
    the previous one). Counted on this rank's samples.

    Args:
        window: iterations the shares are counted over (default: the logging interval).
    """

    # after_train_iter: before CheckpointHook (VERY_LOW), so a checkpoint carries the new weights
    priority = 'NORMAL'

    def __init__(self, window: Optional[int] = None):
        if window is not None and (int(window) != window or window < 1):
            raise ValueError(f'AugBranchHook: window must be a positive integer, got {window}')
        self.window = window
        self.augs: Dict[str, List[MultiBranchAugment]] = {}
        self.events: List[Tuple[int, str, int, int]] = []  # (iteration, task, aug index, entry index)
        self.applied = set()  # (task, aug index, entry index) applied so far
        self._restored = None
        self._counts: Dict[str, deque] = {}  # per task: branch counts of the last `window` iterations
        self._window_len = window or 50
        self._unlabelled_warned = set()

    # ------------------------------------------------------------------ finding the transforms
    @staticmethod
    def _train_loaders(runner) -> Dict[str, object]:
        loop = runner.train_loop
        loaders = getattr(loop, 'dataloaders', None)
        return dict(loaders) if isinstance(loaders, dict) else {'train': loop.dataloader}

    @staticmethod
    def _resolve(entry: dict, max_iters: int) -> int:
        """The iteration an entry applies from: ``at_iter``, or the first at or after ``at_frac`` of training."""
        if 'at_iter' in entry:
            return int(entry['at_iter'])
        return int(math.ceil(entry['at_frac'] * max_iters - 1e-9))

    def before_train(self, runner) -> None:
        max_iters = runner.max_iters
        self.augs = {task: branch_augments(loader.dataset) for task, loader in self._train_loaders(runner).items()}
        self.augs = {t: a for t, a in self.augs.items() if a}
        self.events, self.applied, self._counts = [], set(), {}
        self._window_len = self._window(runner)
        for task, augs in self.augs.items():
            for i, aug in enumerate(augs):
                aug.driven = True
                for j, entry in enumerate(aug.schedule):
                    it = self._resolve(entry, max_iters)
                    if it > max_iters:
                        print_log(f'aug branches of {task}: schedule entry {entry} lies after the last iteration '
                                  f'({max_iters}): never applied', logger='current', level=logging.WARNING)
                    self.events.append((it, task, i, j))
        self.events.sort(key=lambda e: e[0])
        self._check_never_all_off()
        for task, augs in self.augs.items():
            for aug in augs:
                later = [f'{self._resolve(e, max_iters)}: {e["probs"]}' for e in aug.schedule]
                weights = ', '.join(f'{n} {p:.2f}' for n, p in aug.probs_by_name().items())
                print_log(f'aug branches of {task}: {weights}'
                          + (f' (schedule, from iteration: {"; ".join(later)})' if later else ''), logger='current')
        # entries due at or before this iteration (the start, or the resume point): the state the
        # uninterrupted run had here
        self._apply_due(runner, lambda it: it <= runner.iter, restart=False)
        if self._restored is not None:
            self._check_restored(self._restored, runner.iter)
            self._restored = None

    # ------------------------------------------------------------------ schedules
    def _check_never_all_off(self) -> None:
        """Refuse, at the start, a schedule that would leave a transform with every branch off."""
        for task, augs in self.augs.items():
            for i, aug in enumerate(augs):
                weights = dict(zip(aug.names, aug.weights))
                for it, t, a, j in self.events:
                    if (t, a) != (task, i):
                        continue
                    weights.update(aug.schedule[j]['probs'])
                    if sum(weights.values()) <= 0:
                        raise ValueError(f'aug branches of {task}: schedule entry {aug.schedule[j]} (iteration {it}) '
                                         f'would switch every branch of {aug.names} off')

    def _apply_due(self, runner, due, restart: bool) -> None:
        changed = set()
        for it, task, i, j in self.events:
            if (task, i, j) in self.applied or not due(it):
                continue
            aug = self.augs[task][i]
            entry = aug.schedule[j]
            old = aug.probs_by_name()
            aug.set_weights(entry['probs'])
            new = aug.probs_by_name()
            self.applied.add((task, i, j))
            changed.add(task)
            when = 'at_iter' if 'at_iter' in entry else 'at_frac'
            print_log(f'aug branches of {task} from iteration {max(it, runner.iter)} ({when}={entry[when]}): '
                      + ', '.join(f'{n} {old[n]:.2f} -> {new[n]:.2f}' for n in new), logger='current')
        if restart:
            iterators = getattr(runner.train_loop, 'iterators', None) or {}
            for task in changed:
                it = iterators.get(task)
                if it is not None and hasattr(it, 'restart_workers') and it.restart_workers():
                    print_log(f'{task}: loader workers restarted so that they use the new branch weights',
                              logger='current')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.events:
            self._apply_due(runner, lambda it: it == runner.iter + 1, restart=True)
        if data_batch is not None and self.augs:
            self._count(runner, data_batch)

    # ------------------------------------------------------------------ shares in the log
    def _window(self, runner) -> int:
        if self.window is not None:
            return int(self.window)
        from mmengine.hooks import LoggerHook
        for hook in runner.hooks:
            if isinstance(hook, LoggerHook):
                return int(hook.interval)
        return 50

    def _count(self, runner, data_batch) -> None:
        batches = data_batch if 'data_samples' not in data_batch else {'train': data_batch}
        for task, batch in batches.items():
            if task not in self.augs or not isinstance(batch, dict):
                continue
            names = [getattr(s, 'metainfo', {}).get('aug_branch') for s in batch.get('data_samples') or []]
            if not names or all(n is None for n in names):
                if task not in self._unlabelled_warned:
                    self._unlabelled_warned.add(task)
                    print_log(f"{task}: the packed samples carry no 'aug_branch'; add it to the meta_keys of the "
                              "task's Pack transform to log the share of samples per branch",
                              logger='current', level=logging.WARNING)
                continue
            window = self._counts.setdefault(task, deque(maxlen=self._window_len))
            window.append(Counter(n for n in names if n is not None))
            total = Counter()
            for c in window:
                total.update(c)
            n = sum(total.values())
            branches = dict.fromkeys(name for aug in self.augs[task] for name in aug.names)
            branches.update(dict.fromkeys(total))
            for name in branches:
                runner.message_hub.update_scalar(f'train/aug.{task}.{name}', total[name] / n)

    # ------------------------------------------------------------------ checkpoints
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if not self.augs:
            return
        checkpoint['aug_branches'] = dict(
            names={t: [list(a.names) for a in augs] for t, augs in self.augs.items()},
            weights={t: [[float(w) for w in a.weights] for a in augs] for t, augs in self.augs.items()},
            applied=sorted([t, i, j] for t, i, j in self.applied))

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if getattr(runner, '_resume', False):
            self._restored = checkpoint.get('aug_branches', {})

    def _check_restored(self, state: dict, iteration: int) -> None:
        """On resume the weights are the schedule's at the resume iteration (what the uninterrupted run
        had there); the checkpoint's must agree, unless the config (branch weights, schedule, max_iters
        for ``at_frac``) changed since: then say so, and which weights are used."""
        if not state:
            print_log('the checkpoint holds no branch weights (written without AugBranchHook): the branch '
                      f'weights are the schedule\'s at iteration {iteration}', logger='current', level=logging.WARNING)
            return
        for task, augs in self.augs.items():
            saved_names = state.get('names', {}).get(task, [])
            saved_weights = state.get('weights', {}).get(task, [])
            for i, aug in enumerate(augs):
                now = aug.probs_by_name()
                if i < len(saved_names) and list(saved_names[i]) == aug.names:
                    w = np.asarray(saved_weights[i], np.float64)
                    saved = dict(zip(aug.names, (w / w.sum()).tolist()))
                    if np.allclose(list(saved.values()), list(now.values()), rtol=0, atol=1e-9):
                        print_log(f'aug branches of {task} restored at iteration {iteration}: '
                                  + ', '.join(f'{n} {p:.2f}' for n, p in now.items()), logger='current')
                        continue
                    saved = ', '.join(f'{n} {p:.2f}' for n, p in saved.items())
                else:
                    saved = f'branches {saved_names[i] if i < len(saved_names) else "none"}'
                print_log(f'aug branches of {task}: the checkpoint has {saved}, the config\'s schedule at iteration '
                          f'{iteration} gives ' + ', '.join(f'{n} {p:.2f}' for n, p in now.items())
                          + ' (the config or max_iters changed since it was written): using the config\'s',
                          logger='current', level=logging.WARNING)
