"""Leaderboard scoring: one primary metric per task, boards as means over task subsets."""
import json
import logging
import math
import numbers
import os
import os.path as osp
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

from mmengine.logging import print_log

#: Primary metric of each OpenMMLab metric family and the factor that brings it to [0, 1].
KNOWN_PRIMARY = OrderedDict([
    ('coco/bbox_mAP_50', 1.0),   # mmdet CocoMetric, detection mAP at IoU 0.5 (challenge metric)
    ('mIoU', 0.01),              # mmseg IoUMetric reports percentages
    ('accuracy/top1', 0.01),     # mmpretrain Accuracy reports percentages
])
#: Per-class scores (``{class name: score}`` dicts, see ``evaluation/metrics.py``): the metric key
#: after the task's name, the name written in ``leaderboard.json`` and the factor to [0, 1].
KNOWN_PER_CLASS = OrderedDict([
    ('coco/bbox_AP50_per_class', ('AP50', 1.0)),  # ChallengeCocoMetric: AP at IoU 0.5 per class
    ('IoU_per_class', ('IoU', 0.01)),             # ChallengeIoUMetric: IoU per class, in percent
])


def per_class_scores(metrics: Dict[str, object]) -> 'OrderedDict[str, dict]':
    """``{task: {'metric': 'AP50', 'classes': {name: score in [0, 1] or None}}}`` from the metric keys
    ``<task>/<key>`` of :data:`KNOWN_PER_CLASS` (None: the class has no label to score)."""
    out = OrderedDict()
    for key, value in metrics.items():
        task, _, rest = key.partition('/')
        if rest in KNOWN_PER_CLASS and isinstance(value, dict):
            name, scale = KNOWN_PER_CLASS[rest]
            out[task] = OrderedDict(metric=name, classes=OrderedDict(
                (c, None if math.isnan(float(v)) else float(v) * scale) for c, v in value.items()))
    return out


class Leaderboard:
    """Turns per-task metrics into the challenge's scores.

    Args:
        tasks: task names, in display order.
        primary: ``{task: metric key}`` or ``{task: (metric key, scale)}``; a task left out uses the
            first of :data:`KNOWN_PRIMARY` that its evaluator reports.
        boards: ``{board name: [tasks]}``; a board's score is the mean of its tasks' scores. Default
            ``A`` = all tasks (the challenge's leaderboard A); the challenge's ``B`` leaves
            segmentation out and is configured by naming its tasks.
    """

    def __init__(self, tasks: Sequence[str], primary: Optional[Dict] = None, boards: Optional[Dict] = None):
        self.tasks = list(tasks)
        self.primary = {}
        for t, v in (primary or {}).items():
            if t not in self.tasks:
                raise KeyError(f'leaderboard.primary names unknown task {t!r} (tasks: {self.tasks})')
            self.primary[t] = tuple(v) if isinstance(v, (list, tuple)) else (v, KNOWN_PRIMARY.get(v, 1.0))
        self.boards = OrderedDict(boards or dict(A=self.tasks))
        for b, ts in self.boards.items():
            bad = [t for t in ts if t not in self.tasks]
            if bad:
                raise KeyError(f'leaderboard board {b!r} names unknown task(s) {bad} (tasks: {self.tasks})')

    def task_score(self, task: str, metrics: Dict[str, float]) -> float:
        if not any(k.startswith(task + '/') for k in metrics):
            # e.g. mmdet's CocoMetric returns nothing when the model made no detection at all
            print_log(f'leaderboard: task {task!r} reported no metrics (no predictions?); scored 0',
                      logger='current', level=logging.WARNING)
            return 0.0
        if task in self.primary:
            key, scale = self.primary[task]
            full = f'{task}/{key}'
            if full not in metrics:
                raise KeyError(f'leaderboard: task {task!r} has no metric {key!r}; it reported '
                               f'{sorted(k[len(task) + 1:] for k in metrics if k.startswith(task + "/"))}')
            return float(metrics[full]) * scale
        for key, scale in KNOWN_PRIMARY.items():
            if f'{task}/{key}' in metrics:
                return float(metrics[f'{task}/{key}']) * scale
        raise KeyError(f'leaderboard: no primary metric known for task {task!r}; set '
                       f'leaderboard.primary.{task} in the loop config')

    def score(self, metrics: Dict[str, float]) -> 'OrderedDict[str, float]':
        out = OrderedDict((f'leaderboard/{t}', self.task_score(t, metrics)) for t in self.tasks)
        for b, ts in self.boards.items():
            out[f'leaderboard/{b}'] = sum(out[f'leaderboard/{t}'] for t in ts) / len(ts)
        return out

    def table(self, metrics: Dict[str, float]) -> str:
        rows = [('task', 'metric', 'score')]
        for t in self.tasks:
            key = self.primary.get(t, (next((k for k in KNOWN_PRIMARY if f'{t}/{k}' in metrics),
                                            '(no predictions)'),))[0]
            rows.append((t, key, f"{metrics[f'leaderboard/{t}']:.4f}"))
        for b, ts in self.boards.items():
            rows.append((f'leaderboard {b}', 'mean of ' + '+'.join(ts), f"{metrics[f'leaderboard/{b}']:.4f}"))
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        line = '+' + '+'.join('-' * (x + 2) for x in w) + '+'
        fmt = lambda r: '| ' + ' | '.join(c.ljust(x) for c, x in zip(r, w)) + ' |'  # noqa: E731
        return '\n'.join([line, fmt(rows[0]), line] + [fmt(r) for r in rows[1:]] + [line])

    def report(self, metrics: Dict[str, float], work_dir: str, step: int = 0, mode: str = 'val') -> None:
        """Print the table; write ``leaderboard.json`` (latest) and the history + plot for ``val``.

        The JSON holds every scalar metric and, under ``per_class``, each class's score of the tasks
        whose metric reports one (:func:`per_class_scores`: detection AP50, segmentation IoU)."""
        when = f' (iteration {step})' if mode == 'val' else ''
        print_log(f'\n{mode} leaderboard{when}:\n' + self.table(metrics), logger='current')
        os.makedirs(work_dir, exist_ok=True)
        record = OrderedDict(mode=mode, iter=step, **{
            k: (None if math.isnan(float(v)) else float(v)) for k, v in metrics.items()
            if isinstance(v, numbers.Real)})  # numpy too; NaN is not JSON
        per_class = per_class_scores(metrics)
        if per_class:
            record['per_class'] = per_class
        name = 'leaderboard.json' if mode == 'val' else f'leaderboard_{mode}.json'
        with open(osp.join(work_dir, name), 'w') as f:
            json.dump(record, f, indent=1)
        if mode != 'val':
            return
        hist_path = osp.join(work_dir, 'leaderboard_history.json')
        history: List[dict] = []
        if osp.exists(hist_path):
            with open(hist_path) as f:
                history = [h for h in json.load(f) if h.get('iter', -1) < step]
        history.append(record)
        with open(hist_path, 'w') as f:
            json.dump(history, f, indent=1)
        self.plot(history, osp.join(work_dir, 'leaderboard.png'))

    def plot(self, history: List[dict], path: str) -> None:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        its = [h['iter'] for h in history]
        for t in self.tasks:
            ax.plot(its, [h.get(f'leaderboard/{t}', float('nan')) for h in history], marker='o', label=t)
        for b in self.boards:
            ax.plot(its, [h.get(f'leaderboard/{b}', float('nan')) for h in history], marker='s',
                    linewidth=2.5, linestyle='--', label=f'leaderboard {b}')
        ax.set_xlabel('iteration')
        ax.set_ylabel('score (0-1)')
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title('validation scores per task')
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
