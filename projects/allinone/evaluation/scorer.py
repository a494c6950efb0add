"""Offline validation and scoring of a challenge submission file against ground truth.

The ground truth is a data root in the challenge's layout (``cls/{split}.txt``, ``dec/{split}.json``,
``seg/label/{split}/*.png``). Scores follow the leaderboard: top-1 accuracy (``cls``), COCO mAP at
IoU 0.5 from pycocotools with mmdet's settings (``dec``), mIoU over the classes present in ground
truth or prediction with 255 ignored, as mmseg's ``IoUMetric`` (``seg``); board A is their mean,
board B leaves segmentation out.
"""
import contextlib
import io
import json
import math
import os
import os.path as osp
from functools import cached_property
from typing import Dict, List

import cv2
import numpy as np

from .submission import polygons_to_mask

KEYS = ('cls', 'dec', 'seg')


class SubmissionError(ValueError):
    """The submission does not follow the format; the message lists every problem found."""


class GroundTruth:
    """Labels of one split of a challenge-layout data root, each read once, when first needed."""

    def __init__(self, root: str, split: str = 'val', num_seg_classes: int = 19, num_cls_classes: int = 196):
        self.root, self.split = root, split
        self.num_seg_classes, self.num_cls_classes = num_seg_classes, num_cls_classes

    @cached_property
    def cls(self) -> Dict[str, int]:
        path = osp.join(self.root, 'cls', f'{self.split}.txt')
        out = {}
        with open(path) as f:
            for i, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2 or not parts[1].lstrip('-').isdigit():
                    raise ValueError(f'{path}:{i}: expected "image_name class_id", got {line.strip()!r}')
                out[parts[0]] = int(parts[1])
        return out

    @property
    def dec_file(self) -> str:
        return osp.join(self.root, 'dec', f'{self.split}.json')

    @cached_property
    def seg(self) -> Dict[str, str]:
        folder = osp.join(self.root, 'seg', 'label', self.split)
        return {osp.splitext(n)[0] + '.jpg': osp.join(folder, n) for n in sorted(os.listdir(folder))
                if n.endswith('.png')}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_image_names(key: str, preds: dict, truth, problems: List[str]) -> None:
    """Every predicted image must exist in the ground truth, and every ground-truth image be predicted."""
    problems.extend(f'{key}: unknown image {name!r}' for name in preds if name not in truth)
    missing = [n for n in truth if n not in preds]
    if missing:
        problems.append(f'{key}: {len(missing)} image(s) have no prediction (first: {missing[:3]})')


def validate(sub, gt: GroundTruth, tasks=KEYS, max_report: int = 20) -> None:
    """Raise :class:`SubmissionError` listing what does not follow the format."""
    problems: List[str] = []
    if not isinstance(sub, dict):
        raise SubmissionError(f'the submission must be a JSON object with keys {list(KEYS)}, got {type(sub).__name__}')
    unknown = [k for k in sub if k not in KEYS]
    if unknown:
        problems.append(f'unknown top-level key(s) {unknown}; expected {list(KEYS)}')
    for k in tasks:
        if k not in sub:
            problems.append(f'missing top-level key {k!r}')
    if 'cls' in tasks and isinstance(sub.get('cls'), dict):
        _check_image_names('cls', sub['cls'], gt.cls, problems)
        for name, cid in sub['cls'].items():
            if not isinstance(cid, int) or isinstance(cid, bool) or not 0 <= cid < gt.num_cls_classes:
                problems.append(f'cls[{name!r}]: class id must be an int in [0, {gt.num_cls_classes}), got {cid!r}')
    elif 'cls' in tasks and 'cls' in sub:
        problems.append(f"cls must map image names to class ids, got {type(sub['cls']).__name__}")
    if 'dec' in tasks and isinstance(sub.get('dec'), list):
        with open(gt.dec_file) as f:
            coco = json.load(f)
        img_ids = {im['id'] for im in coco['images']}
        cat_ids = {c['id'] for c in coco['categories']}
        for i, d in enumerate(sub['dec']):
            where = f'dec[{i}]'
            if not isinstance(d, dict) or set(d) < {'image_id', 'category_id', 'bbox', 'score'}:
                problems.append(f'{where}: must be an object with image_id, category_id, bbox, score')
                continue
            if d['image_id'] not in img_ids:
                problems.append(f"{where}: unknown image_id {d['image_id']!r}")
            if d['category_id'] not in cat_ids:
                problems.append(f"{where}: unknown category_id {d['category_id']!r}")
            b = d['bbox']
            if not (isinstance(b, list) and len(b) == 4 and all(_finite(v) for v in b)) or b[2] <= 0 or b[3] <= 0:
                problems.append(f'{where}: bbox must be [x, y, w, h] with finite numbers and w, h > 0, got {b!r}')
            if not _finite(d['score']):
                problems.append(f"{where}: score must be a finite number, got {d['score']!r}")
    elif 'dec' in tasks and 'dec' in sub:
        problems.append(f"dec must be a list of COCO detections, got {type(sub['dec']).__name__}")
    if 'seg' in tasks and isinstance(sub.get('seg'), dict):
        _check_image_names('seg', sub['seg'], gt.seg, problems)
        for name, per_class in sub['seg'].items():
            if not isinstance(per_class, dict):
                problems.append(f'seg[{name!r}]: must map class ids to lists of polygons')
                continue
            for cid, polys in per_class.items():
                if not str(cid).isdigit() or not 0 <= int(cid) < gt.num_seg_classes:
                    problems.append(f'seg[{name!r}]: class id must be in [0, {gt.num_seg_classes}), got {cid!r}')
                if not isinstance(polys, list) or not all(
                        isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(_finite(v) for v in p)
                        for p in polys):
                    problems.append(f'seg[{name!r}][{cid!r}]: polygons must be lists of >= 3 finite x, y pairs')
    elif 'seg' in tasks and 'seg' in sub:
        problems.append(f"seg must map image names to {{class_id: polygons}}, got {type(sub['seg']).__name__}")
    if problems:
        more = f'\n  ... and {len(problems) - max_report} more' if len(problems) > max_report else ''
        raise SubmissionError(f'{len(problems)} problem(s) in the submission:\n  '
                              + '\n  '.join(problems[:max_report]) + more)


def score_cls(pred: Dict[str, int], truth: Dict[str, int]) -> float:
    return sum(int(pred.get(n, -1) == c) for n, c in truth.items()) / max(1, len(truth))


def score_dec(dets: list, ann_file: str) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    if not dets:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann_file)
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, 'bbox')
        ev.params.maxDets = [100, 300, 1000]  # as mmdet's CocoMetric
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1])


def score_seg(pred: Dict[str, dict], truth: Dict[str, str], num_classes: int) -> float:
    inter = np.zeros(num_classes)
    area_pred = np.zeros(num_classes)
    area_gt = np.zeros(num_classes)
    for name, path in truth.items():
        gt = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if gt is None:
            raise FileNotFoundError(f'cannot read ground-truth label {path}')
        h, w = gt.shape[:2]
        label = np.full((h, w), 255, np.uint8)
        for cid, polys in sorted(pred.get(name, {}).items(), key=lambda kv: int(kv[0])):
            label[polygons_to_mask(polys, h, w).astype(bool)] = int(cid)
        valid = gt != 255
        g, p = gt[valid].astype(np.int64), label[valid].astype(np.int64)
        area_gt += np.bincount(g, minlength=256)[:num_classes]
        area_pred += np.bincount(p, minlength=256)[:num_classes]
        inter += np.bincount(g[g == p], minlength=256)[:num_classes]
    union = area_pred + area_gt - inter
    with np.errstate(invalid='ignore', divide='ignore'):
        return float(np.nanmean(inter / union))


def score(sub: dict, gt: GroundTruth, tasks=KEYS) -> Dict[str, float]:
    """Validate, then score every task in ``tasks`` and the boards A (all) and B (without seg)."""
    validate(sub, gt, tasks)
    out = {}
    if 'cls' in tasks:
        out['cls'] = score_cls(sub['cls'], gt.cls)
    if 'dec' in tasks:
        out['dec'] = score_dec(sub['dec'], gt.dec_file)
    if 'seg' in tasks:
        out['seg'] = score_seg(sub['seg'], gt.seg, gt.num_seg_classes)
    out['A'] = sum(out[t] for t in tasks) / len(tasks)
    b = [t for t in tasks if t != 'seg']
    if b:
        out['B'] = sum(out[t] for t in b) / len(b)
    return out
