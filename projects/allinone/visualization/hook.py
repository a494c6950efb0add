"""Validation and test pictures of every task, each drawn by its own library's visualiser."""
import os
import os.path as osp
from collections import Counter
from typing import Optional, Sequence

import mmcv
from mmengine.fileio import get
from mmengine.hooks import Hook

from ..registry import HOOKS
from .visualizer import MultiTaskVisualizer, safe_name


def _task_of(loop) -> Optional[str]:
    """The task whose batches the multi-task val/test loop is running."""
    return getattr(loop, 'current_task', None)


@HOOKS.register_module()
class MultiTaskVisualizationHook(Hook):
    """mmdet's ``DetVisualizationHook`` for every task of an AllInOne model.

    The multi-task loops run one loader per task; this hook draws each task's samples with its
    library's visualiser (:class:`MultiTaskVisualizer`: mmdet boxes, mmseg label maps, mmpretrain
    labels; ground truth beside the prediction), with the task's class names.

    * validation: every ``interval``-th batch of each task, its first sample, to the runner's
      visualizer backends (``LocalVisBackend``: ``vis_data/vis_image/val_<task>_<k>_<iter>.png``;
      TensorBoard: tag ``val_<task>_<k>``, step = the training iteration);
    * test: every sample (at most ``max_per_task`` per task), to ``test_out_dir/<task>/<image>.png``
      when given (relative: under ``work_dir/<timestamp>/``), else to the backends.

    Args:
        draw: off by default, as mmdet's hook.
        interval: validation batches between two pictures (per task).
        score_thr: detection score threshold of the drawn boxes.
        draw_gt: draw the ground truth beside the prediction (when the sample has one).
        test_out_dir: folder of the test pictures.
        max_per_task: at most this many test pictures per task (None: all).
        tasks: only these tasks (None: all).
        min_size: draw smaller images enlarged to this short side (legible labels).
    """
    priority = 'NORMAL'

    def __init__(self, draw: bool = False, interval: int = 50, score_thr: float = 0.3, draw_gt: bool = True,
                 test_out_dir: Optional[str] = None, max_per_task: Optional[int] = None,
                 tasks: Optional[Sequence[str]] = None, min_size: int = 320, backend_args: Optional[dict] = None):
        if interval < 1:
            raise ValueError(f'MultiTaskVisualizationHook: interval must be >= 1, got {interval}')
        self.draw = draw
        self.interval = interval
        self.score_thr = score_thr
        self.draw_gt = draw_gt
        self.test_out_dir = test_out_dir
        self.max_per_task = max_per_task
        self.tasks = None if tasks is None else list(tasks)
        self.backend_args = backend_args
        self.drawer = MultiTaskVisualizer(name=f'multitask_vis_{id(self)}', min_size=min_size)
        self._metas_of = None
        self._drawn = Counter()
        self.written = []  # test pictures written by this hook (paths)

    def _prepare(self, loop) -> None:
        if self._metas_of is loop:
            return
        self._metas_of = loop
        for task, loader in (getattr(loop, 'dataloaders', None) or {}).items():
            self.drawer.set_task_meta(task, getattr(loader.dataset, 'metainfo', None))

    def _image(self, sample):
        img_path = sample.metainfo.get('img_path')
        if img_path is None:
            raise KeyError('MultiTaskVisualizationHook needs img_path in the data samples\' meta (the '
                           "pack transform's meta_keys)")
        return mmcv.imfrombytes(get(img_path, backend_args=self.backend_args), channel_order='rgb'), img_path

    def _wanted(self, runner, task) -> bool:
        # rank 0 draws its share of the samples, as mmdet's hook (master_only)
        return self.draw and runner.rank == 0 and task is not None and (self.tasks is None or task in self.tasks)

    def before_val(self, runner) -> None:
        self._drawn = Counter()

    def after_val_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        task = _task_of(runner.val_loop)
        if not self._wanted(runner, task) or batch_idx % self.interval or not outputs:
            return
        self._prepare(runner.val_loop)
        image, _ = self._image(outputs[0])
        drawn = self.drawer.draw_task(task, image, outputs[0], self.draw_gt, True, self.score_thr)
        runner.visualizer.add_image(f'val_{task}_{self._drawn[task]}', drawn, step=runner.iter)
        self._drawn[task] += 1

    def before_test(self, runner) -> None:
        self._drawn = Counter()
        if self.draw and self.test_out_dir is not None and not osp.isabs(self.test_out_dir):
            self.test_out_dir = osp.join(runner.work_dir, runner.timestamp, self.test_out_dir)

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        task = _task_of(runner.test_loop)
        if not self._wanted(runner, task):
            return
        self._prepare(runner.test_loop)
        for sample in outputs or []:
            if self.max_per_task is not None and self._drawn[task] >= self.max_per_task:
                return
            image, img_path = self._image(sample)
            drawn = self.drawer.draw_task(task, image, sample, self.draw_gt, True, self.score_thr)
            if self.test_out_dir is not None:
                out = osp.join(self.test_out_dir, task, safe_name(osp.splitext(osp.basename(img_path))[0]) + '.png')
                os.makedirs(osp.dirname(out), exist_ok=True)
                mmcv.imwrite(mmcv.rgb2bgr(drawn), out)
                self.written.append(out)
            else:
                runner.visualizer.add_image(f'test_{task}_{self._drawn[task]}', drawn, step=self._drawn[task])
            self._drawn[task] += 1
