"""Challenge submission JSON from test-time predictions.

The format (see CHALLENGE.md)::

    {"cls": {image_name: class_id}, "dec": [{image_id, category_id, bbox: [x, y, w, h], score}],
     "seg": {image_name: {class_id: [polygon, ...]}}}

Each task's predictions are converted by what they are, not by the task's name: samples with
``pred_instances`` become COCO detections, with ``pred_sem_seg`` polygons per class, with
``pred_label`` a class id. ``keys`` maps a task name to its key in the file (default: the name).
"""
import json
import os
import os.path as osp
from collections import OrderedDict
from typing import Dict, List, Optional

import cv2
import numpy as np


def _get(sample, key, default=None):
    if isinstance(sample, dict):
        return sample.get(key, default)
    return getattr(sample, key, default) if hasattr(sample, key) else default


def mask_to_polygons(mask: np.ndarray) -> List[List[float]]:
    """Outer boundaries and holes of a binary mask as flat ``[x0, y0, x1, y1, ...]`` polygons.

    :func:`polygons_to_mask` fills them back with the even-odd rule (a hole inside an outer
    boundary is cut out), so the round trip loses only the pixels the contour tracing cannot
    represent (the measured loss is in docs/challenge.md).
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def polygons_to_mask(polygons: List[List[float]], height: int, width: int) -> np.ndarray:
    """Rasterise polygons with the even-odd rule; the inverse of :func:`mask_to_polygons`."""
    out = np.zeros((height, width), np.uint8)
    for poly in polygons:
        pts = np.asarray(poly, np.float64).reshape(-1, 2).round().astype(np.int32)
        layer = np.zeros_like(out)
        cv2.fillPoly(layer, [pts], 1)
        cv2.polylines(layer, [pts], True, 1)
        out ^= layer
    return out


class SubmissionBuilder:
    """Collects test predictions task by task and writes the challenge JSON."""

    def __init__(self, keys: Optional[Dict[str, str]] = None):
        self.keys = dict(keys or {})
        self.content: Dict[str, object] = OrderedDict()
        # task -> one entry per sample, in loader order: what `gather` sends between ranks
        self._entries: Dict[str, list] = OrderedDict()

    def add(self, task: str, samples, dataset=None) -> None:
        key = self.keys.get(task, task)
        for s in samples:
            name = osp.basename(_get(s, 'img_path') or '')
            if _get(s, 'pred_instances') is not None:
                entry = ('list', key, self._add_det(key, s, dataset))
            elif _get(s, 'pred_sem_seg') is not None:
                seg = _get(s, 'pred_sem_seg')
                data = seg.data if hasattr(seg, 'data') else seg['data']
                m = np.asarray(data.cpu() if hasattr(data, 'cpu') else data)[0]
                value = {str(int(c)): mask_to_polygons(m == c) for c in np.unique(m) if c != 255}
                self.content.setdefault(key, OrderedDict())[name] = value
                entry = ('map', key, name, value)
            elif _get(s, 'pred_label') is not None:
                label = _get(s, 'pred_label')
                value = int(np.asarray(label.cpu() if hasattr(label, 'cpu') else label).reshape(-1)[0])
                self.content.setdefault(key, OrderedDict())[name] = value
                entry = ('map', key, name, value)
            else:
                raise TypeError(f'task {task!r}: cannot export a prediction without pred_instances, '
                                'pred_sem_seg or pred_label')
            self._entries.setdefault(task, []).append(entry)

    def gather(self, sizes: Dict[str, int]) -> None:
        """Data-parallel test: rank 0's content becomes the predictions of all ranks, each sample once.

        Every rank calls it with ``{task: len(dataset)}`` in the same order. As mmengine's metrics
        do, the per-sample entries are interleaved back into dataset order (``DefaultSampler`` gives
        rank r the samples r, r + R, ...) and cut at the dataset size, which drops the samples the
        sampler repeats to make the ranks' shares equal. A no-op in one process.
        """
        from mmengine.dist import collect_results, get_world_size
        if get_world_size() == 1:
            return
        content: Dict[str, object] = OrderedDict()
        for task, size in sizes.items():
            # device='gpu' is mmengine's all_gather_object path (CPU tensors under gloo): unlike
            # 'cpu' it needs no directory shared by the nodes
            for entry in collect_results(self._entries.get(task, []), size, device='gpu') or []:
                if entry[0] == 'list':
                    content.setdefault(entry[1], []).extend(entry[2])
                else:
                    content.setdefault(entry[1], OrderedDict())[entry[2]] = entry[3]
        self.content = content

    def _add_det(self, key, s, dataset):
        cat_ids = getattr(dataset, 'cat_ids', None)
        pred = _get(s, 'pred_instances')
        get = (lambda k: pred[k]) if isinstance(pred, dict) else (lambda k: getattr(pred, k))
        boxes, scores, labels = (np.asarray(get(k).cpu() if hasattr(get(k), 'cpu') else get(k))
                                 for k in ('bboxes', 'scores', 'labels'))
        out, added = self.content.setdefault(key, []), []
        for b, sc, lb in zip(boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)):
            added.append(dict(image_id=int(_get(s, 'img_id')),
                            category_id=self._category_id(cat_ids, int(lb), dataset),
                            bbox=[round(float(b[0]), 2), round(float(b[1]), 2),
                                  round(float(b[2] - b[0]), 2), round(float(b[3] - b[1]), 2)],
                            score=round(float(sc), 5)))
        out.extend(added)
        return added

    @staticmethod
    def _category_id(cat_ids, label: int, dataset) -> int:
        """The annotation file's id of class ``label`` (the datasets map names to ids); ``label + 1``
        for a dataset that has no ids (no categories to map to)."""
        if not cat_ids:
            return label + 1
        if label >= len(cat_ids) or cat_ids[label] is None:
            classes = (getattr(dataset, 'metainfo', None) or {}).get('classes') or ()
            name = classes[label] if label < len(classes) else f'#{label}'
            raise KeyError(f'submission: class {name!r} (label {label}) has no category id in the annotation '
                           f"file of {type(dataset).__name__} ({getattr(dataset, 'ann_file', '')}); its "
                           'categories must name every class of the config')
        return int(cat_ids[label])

    def dump(self, path: str) -> None:
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        with open(path, 'w') as f:
            json.dump(self.content, f)
