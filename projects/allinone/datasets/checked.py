"""The challenge's three formats, loaded by the libraries' own dataset classes, with bad input named.

mmdet's ``CocoDataset`` drops invalid boxes without a word, mmseg's ``BaseSegDataset`` pairs images
with label files it never checks, and mmpretrain's ``CustomDataset`` fails on a malformed list line
without naming the file. These subclasses check each sample when the dataset loads and, per
``on_bad_sample``, stop with an error that names the file (and line, image or annotation), or skip
the bad sample (a bad box alone, for detection) and log how many were skipped.
"""
import json
import logging
import math
import os.path as osp
from collections import Counter
from typing import List, Optional

import numpy as np
from mmdet.datasets import CocoDataset
from mmengine.logging import print_log
from mmpretrain.datasets import CustomDataset
from mmpretrain.registry import DATASETS as CLS_DATASETS
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS as SEG_DATASETS
from PIL import Image

from ..registry import DATASETS
from .mixing import MixingPipelineMixin


class BadInputError(ValueError):
    """A sample of an annotation file or data folder is broken; the message says where."""


class BadSamplePolicy:
    """``on_bad_sample='raise'`` (default) stops at the first bad sample; ``'skip'`` drops it."""

    def _init_policy(self, on_bad_sample: str) -> None:
        if on_bad_sample not in ('raise', 'skip'):
            raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}")
        self.on_bad_sample = on_bad_sample
        self.skipped = Counter()

    def _bad(self, kind: str, message: str) -> None:
        if self.on_bad_sample == 'raise':
            raise BadInputError(message + "  (set on_bad_sample='skip' in the dataset config to skip such samples)")
        self.skipped[kind] += 1

    def _report(self, source: str) -> None:
        if self.skipped:
            what = ', '.join(f'{n} {k}' for k, n in self.skipped.items())
            print_log(f'{source}: skipped {what} (on_bad_sample=skip)', logger='current', level=logging.WARNING)


@DATASETS.register_module()
class ChallengeCocoDataset(MixingPipelineMixin, BadSamplePolicy, CocoDataset):
    """COCO json detection (TT100K in the challenge) with every image and box checked."""

    def __init__(self, *args, on_bad_sample: str = 'raise', **kwargs):
        self._init_policy(on_bad_sample)
        super().__init__(*args, **kwargs)

    def load_data_list(self) -> List[dict]:
        if not osp.isfile(self.ann_file):
            raise BadInputError(f'annotation file not found: {self.ann_file}')
        if osp.getsize(self.ann_file) == 0:
            raise BadInputError(f'{self.ann_file}: the annotation file is empty')
        try:
            data_list = super().load_data_list()
        except json.JSONDecodeError as e:
            raise BadInputError(f'{self.ann_file}: not valid JSON ({e})') from e
        except KeyError as e:
            raise BadInputError(f'{self.ann_file}: not a COCO file (missing key {e})') from e
        data_list = [d for d in data_list if d is not None]
        if not data_list:
            raise BadInputError(f'{self.ann_file}: no usable image in the annotation file')
        self._report(self.ann_file)
        return data_list

    def parse_data_info(self, raw: dict) -> Optional[dict]:
        img = raw['raw_img_info']
        where = f"{self.ann_file}: image id {img.get('id')} ({img.get('file_name')})"
        path = osp.join(self.data_prefix.get('img', ''), img['file_name'])
        if not osp.isfile(path):
            self._bad('images (file missing)', f'{where}: image file not found: {path}')
            return None
        w_img, h_img = img.get('width'), img.get('height')
        good = []
        for ann in raw['raw_ann_info']:
            problem = self._box_problem(ann, w_img, h_img)
            if problem:
                self._bad('boxes', f"{where}, annotation id {ann.get('id')}: {problem}")
            else:
                good.append(ann)
        return super().parse_data_info(dict(raw, raw_ann_info=good))

    def _box_problem(self, ann: dict, width, height) -> Optional[str]:
        box = ann.get('bbox')
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
            return f'bbox must be [x, y, w, h] of finite numbers, got {box!r}'
        x, y, w, h = box
        if w <= 0 or h <= 0:
            return f'box with non-positive size {box}'
        if width and height and (x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1):
            return f'box {box} lies outside the {width}x{height} image'
        if ann.get('category_id') not in self.coco.cats:
            return f"category_id {ann.get('category_id')!r} is not among the file's categories"
        return None


@SEG_DATASETS.register_module()
class ChallengeSegDataset(MixingPipelineMixin, BadSamplePolicy, BaseSegDataset):
    """Images with single-channel label PNGs (BDD100K in the challenge), each pair checked.

    Args:
        check_labels: also open every label map once at load (size equal to the image's, values
            in ``0..num_classes-1`` or 255); costs one PNG decode per sample.
    """

    def __init__(self, *args, on_bad_sample: str = 'raise', check_labels: bool = True, **kwargs):
        self._init_policy(on_bad_sample)
        self.check_labels = check_labels
        super().__init__(*args, **kwargs)

    def load_data_list(self) -> List[dict]:
        img_dir = self.data_prefix.get('img_path', '')
        if not osp.isdir(img_dir):
            raise BadInputError(f'image folder not found: {img_dir}')
        data_list = super().load_data_list()
        if not data_list:
            raise BadInputError(f'no image with suffix {self.img_suffix} in {img_dir}')
        num_classes = len(self.metainfo['classes'])
        kept = []
        for d in data_list:
            img, seg = d['img_path'], d['seg_map_path']
            if not osp.isfile(seg):
                self._bad('images (label missing)', f'{img}: its label map is missing: {seg}')
                continue
            if self.check_labels:
                problem = self._label_problem(img, seg, num_classes)
                if problem:
                    self._bad('images (bad label)', f'{seg}: {problem}')
                    continue
            kept.append(d)
        if not kept:
            raise BadInputError(f'{img_dir}: no usable image / label pair')
        self._report(img_dir)
        return kept

    @staticmethod
    def _label_problem(img: str, seg: str, num_classes: int) -> Optional[str]:
        with Image.open(img) as im:
            size = im.size
        with Image.open(seg) as lb:
            if lb.size != size:
                return f'label size {lb.size[0]}x{lb.size[1]} differs from the image {img} ({size[0]}x{size[1]})'
            values = np.unique(np.asarray(lb))
        bad = [int(v) for v in values if v >= num_classes and v != 255]
        if bad:
            return f'label values {bad} outside 0..{num_classes - 1} (255 = ignore)'
        return None


@CLS_DATASETS.register_module()
class ChallengeClsDataset(MixingPipelineMixin, BadSamplePolicy, CustomDataset):
    """``image_name class_id`` lists (Stanford Cars in the challenge), each line checked."""

    def __init__(self, *args, on_bad_sample: str = 'raise', **kwargs):
        self._init_policy(on_bad_sample)
        super().__init__(*args, **kwargs)

    def load_data_list(self) -> List[dict]:
        if not self.ann_file:
            return super().load_data_list()  # folder-per-class layout: upstream behaviour
        if not osp.isfile(self.ann_file):
            raise BadInputError(f'annotation file not found: {self.ann_file}')
        num_classes = len(self.metainfo['classes'])
        data_list = []
        with open(self.ann_file) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f'{self.ann_file}:{lineno}'
                parts = line.strip().rsplit(' ', 1)
                if len(parts) != 2 or not parts[1].lstrip('-').isdigit():
                    self._bad('lines (malformed)', f'{where}: expected "image_name class_id", got {line.strip()!r}')
                    continue
                name, label = parts[0], int(parts[1])
                if not 0 <= label < num_classes:
                    self._bad('lines (label out of range)',
                              f'{where}: class id {label} outside 0..{num_classes - 1}')
                    continue
                path = osp.join(self.img_prefix, name)
                if not osp.isfile(path):
                    self._bad('lines (image missing)', f'{where}: image file not found: {path}')
                    continue
                data_list.append(dict(img_path=path, gt_label=label))
        if not data_list:
            raise BadInputError(f'{self.ann_file}: no usable line (the file is empty or every line is bad)')
        self._report(self.ann_file)
        return data_list
