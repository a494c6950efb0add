"""The libraries' metrics with classes matched by name and a score per class.

* :class:`ChallengeCocoMetric` (mmdet ``CocoMetric``): mmdet maps prediction label ``i`` to the
  ``i``-th category *the file lists* among the config's class names, which is another class when
  the file lists them in another order (and an ``IndexError`` in ``results2json`` when the file lacks
  some). Here label ``i`` is the config's ``i``-th class and gets that name's id in the file, as in
  :class:`~projects.allinone.datasets.ChallengeCocoDataset`. Predicted images that the file does
  not have are an error naming the file. Each class's AP at IoU 0.5 (the challenge's metric) is
  returned as ``bbox_AP50_per_class``: ``{class: AP}``.
* :class:`ChallengeIoUMetric` (mmseg ``IoUMetric``): each class's IoU as ``IoU_per_class``:
  ``{class: IoU}`` (percent, as mmseg's ``mIoU``), which mmseg only prints.

The per-class scores are one dict per metric, not one scalar per class, so that the log line of a
validation stays readable (mmengine logs scalars; a dict goes to the message hub's info); the
leaderboard writes them to ``leaderboard.json`` (``per_class``).
"""
import contextlib
import io
import logging
import os.path as osp
import tempfile
from typing import Dict

import numpy as np
from mmdet.datasets.api_wrappers import COCOeval
from mmdet.evaluation.metrics import CocoMetric
from mmengine.fileio import load
from mmengine.logging import print_log
from mmseg.evaluation.metrics import IoUMetric
from mmseg.registry import METRICS as SEG_METRICS

from ..datasets.checked import BadInputError, categories_problem, category_ids_by_name
from ..registry import METRICS

#: keys of the per-class scores these metrics return
PER_CLASS_AP50 = 'bbox_AP50_per_class'
PER_CLASS_IOU = 'IoU_per_class'


@METRICS.register_module()
class ChallengeCocoMetric(CocoMetric):
    """mmdet's ``CocoMetric`` with category ids by class name, and AP at IoU 0.5 per class.

    Args:
        per_class: also return ``bbox_AP50_per_class``, ``{class: AP at IoU 0.5}`` for every class of
            the dataset (``nan`` for a class without boxes in the annotation file). Costs a second
            COCOeval pass at the one IoU threshold.
        Others: as mmdet's ``CocoMetric``.
    """

    def __init__(self, *args, per_class: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.per_class = per_class
        self.ann_file = kwargs.get('ann_file', args[0] if args else None)

    def _match_categories(self) -> None:
        """``cat_ids`` by name in this metric's annotation file (mmdet: by the file's listing order)."""
        source = self.ann_file or 'the ground truth converted from the dataset'
        categories = self._coco_api.dataset.get('categories') or []
        problem = categories_problem(categories, source)
        if problem:
            raise BadInputError(problem)
        classes = list(self.dataset_meta['classes'])
        ids, missing = category_ids_by_name(categories, classes)
        if missing:
            print_log(f"{source}: the config's classes {missing} are not among the annotation file's categories: "
                      'not evaluated', logger='current', level=logging.WARNING)
        # a placeholder id no category has, so that results2json can still write the label
        self.cat_ids = [i if i is not None else -1 - k for k, i in enumerate(ids)]

    def compute_metrics(self, results: list) -> Dict[str, float]:
        if self._coco_api is not None:
            if self.cat_ids is None:
                self._match_categories()
            known = set(self._coco_api.get_img_ids())
            stray = sorted({gt['img_id'] for gt, _ in results} - known)
            if stray:
                raise BadInputError(
                    f'{self.ann_file}: {len(stray)} of the {len(results)} evaluated images are not in this annotation '
                    f'file (image ids {stray[:5]}...): the evaluator must read the annotation file of the dataset it '
                    'evaluates (its ann_file)')
        metrics = super().compute_metrics(results)
        if self.per_class and 'bbox' in self.metrics and not self.format_only and 'bbox_mAP_50' in metrics:
            metrics.update(self._per_class_ap50([pred for _, pred in results]))
        return metrics

    def _per_class_ap50(self, preds) -> Dict[str, float]:
        """AP at IoU 0.5 of each class, from COCOeval's precision table with mmdet's settings (all
        areas, the largest ``maxDets``): the mean over the classes that have boxes is ``bbox_mAP_50``."""
        with tempfile.TemporaryDirectory() as tmp:
            dets = load(self.results2json(preds, osp.join(tmp, 'per_class'))['bbox'])
        if not dets:
            return {}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco_eval = COCOeval(self._coco_api, self._coco_api.loadRes(dets), 'bbox')
            coco_eval.params.catIds = self.cat_ids
            coco_eval.params.imgIds = self.img_ids
            coco_eval.params.maxDets = list(self.proposal_nums)
            coco_eval.params.iouThrs = np.array([0.5])
            coco_eval.evaluate()
            coco_eval.accumulate()
        precision = coco_eval.eval['precision'][0, :, :, 0, -1]  # (recall thresholds, categories)
        # COCOeval sorts params.catIds: column k is the k-th smallest id, not the k-th class
        column = {cat_id: k for k, cat_id in enumerate(coco_eval.params.catIds)}
        per_class = {}
        for name, cat_id in zip(self.dataset_meta['classes'], self.cat_ids):
            p = precision[:, column[cat_id]]
            p = p[p > -1]
            per_class[str(name)] = float(np.mean(p)) if p.size else float('nan')
        return {PER_CLASS_AP50: per_class}


@SEG_METRICS.register_module()
class ChallengeIoUMetric(IoUMetric):
    """mmseg's ``IoUMetric`` that also returns each class's IoU (``IoU_per_class``: ``{class: IoU}``,
    percent, 2 decimals as mmseg rounds ``mIoU``; ``nan`` for a class absent from both labels and
    predictions)."""

    def compute_metrics(self, results: list) -> Dict[str, float]:
        metrics = super().compute_metrics(results)
        if self.format_only or not results:
            return metrics
        intersect = sum(r[0] for r in results)
        union = sum(r[1] for r in results)
        iou = (intersect / union).cpu().numpy() if hasattr(intersect, 'cpu') else intersect / union
        if self.nan_to_num is not None:
            iou = np.nan_to_num(iou, nan=self.nan_to_num)
        metrics[PER_CLASS_IOU] = {str(name): float(np.round(value * 100, 2))
                                  for name, value in zip(self.dataset_meta['classes'], iou)}
        return metrics
