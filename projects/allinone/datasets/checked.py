"""The challenge's three formats, loaded by the libraries' own dataset classes, with bad input named.

mmdet's ``CocoDataset`` drops invalid boxes without a word, mmseg's ``BaseSegDataset`` pairs images
with label files it never checks, and mmpretrain's ``CustomDataset`` fails on a malformed list line
without naming the file. These subclasses check each sample when the dataset loads and, per
``on_bad_sample``, stop with an error that names the file (and line, image or annotation), or skip
the bad sample (a bad box alone, for detection) and log how many were skipped.

Detection boxes get their class by category *name*: mmdet's ``CocoDataset`` numbers the classes in
the order the file lists its categories (``get_cat_ids``), so a file that lists them in another
order than the config gives boxes another class's name, and drops the boxes of categories the
config lacks without a word.
"""
import json
import logging
import math
import os.path as osp
from collections import Counter
from typing import List, Optional, Sequence, Tuple

import numpy as np
from mmdet.datasets import CocoDataset
from mmdet.datasets.api_wrappers import COCO
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


def categories_problem(categories, source: str) -> Optional[str]:
    """What makes a COCO ``categories`` list unusable for mapping by name (duplicates), or None."""
    if not isinstance(categories, list) or not all(isinstance(c, dict) and 'id' in c and 'name' in c
                                                   for c in categories):
        return f'{source}: "categories" must be a list of {{"id", "name"}} objects'
    for key in ('id', 'name'):
        seen = Counter(c[key] for c in categories)
        twice = sorted((v for v, n in seen.items() if n > 1), key=str)
        if twice:
            return f'{source}: categories with the same {key}: {twice}; names must map to one id each'
    return None


def classes_from_categories(categories) -> Tuple[str, ...]:
    """The classes of a config that lists none: the file's category names, in the order of their ids.

    Ordered by id rather than by listing, so two files (train, val) that list the same categories
    in different orders still give each name the same label.
    """
    return tuple(c['name'] for c in sorted(categories, key=lambda c: c['id']))


def category_ids_by_name(categories, classes: Sequence[str]) -> Tuple[List[Optional[int]], List[str]]:
    """``(ids, missing)``: the category id of each class *name* (None where the file has no such
    name), and the classes the file lacks."""
    by_name = {c['name']: c['id'] for c in categories}
    ids = [by_name.get(name) for name in classes]
    return ids, [name for name, i in zip(classes, ids) if i is None]


class ByNameCOCO(COCO):
    """mmdet's COCO reader whose ``get_cat_ids(cat_names=...)`` follows the order of the names.

    pycocotools (and so mmdet's ``CocoDataset`` and ``CocoMetric``) returns the ids in the file's
    order, and silently shorter when a name is missing; here the i-th id is that of the i-th name,
    None for a missing one.
    """

    def get_cat_ids(self, cat_names=[], sup_names=[], cat_ids=[]):  # noqa: B006 (mmdet's signature)
        if not cat_names or sup_names or cat_ids:
            return super().get_cat_ids(cat_names=cat_names, sup_names=sup_names, cat_ids=cat_ids)
        return category_ids_by_name(self.dataset.get('categories', []), list(cat_names))[0]


@DATASETS.register_module()
class ChallengeCocoDataset(MixingPipelineMixin, BadSamplePolicy, CocoDataset):
    """COCO json detection (TT100K in the challenge) with every image and box checked.

    Boxes get their class by category name: label ``i`` is the config's ``i``-th class whatever the
    file's category ids and order, and ``cat_ids[i]`` is that name's id in the file (the id the
    submission is written with). A category of the file that the config's classes do not name is an
    error naming those categories and the file (with ``on_bad_sample='skip'``, its boxes are dropped,
    counted and logged); a class of the config that the file lacks is an error too (with ``skip``, a
    warning: the class has no box and no id). A config without ``metainfo.classes`` takes the
    file's categories, in the order of their ids.
    """

    def __init__(self, *args, on_bad_sample: str = 'raise', **kwargs):
        self._init_policy(on_bad_sample)
        self.classes_from_file = not (kwargs.get('metainfo') or {}).get('classes')
        self._dropped_cats = {}
        super().__init__(*args, **kwargs)

    def COCOAPI(self, path: str) -> COCO:  # noqa: N802 (mmdet's CocoDataset calls self.COCOAPI(path))
        """Read the file with :class:`ByNameCOCO` and match its categories to the classes by name."""
        coco = ByNameCOCO(path)
        categories = coco.dataset.get('categories')
        if categories is None:
            raise BadInputError(f'{self.ann_file}: not a COCO file (missing key \'categories\')')
        if not coco.dataset.get('images'):
            raise BadInputError(f'{self.ann_file}: no usable image in the annotation file (its "images" is empty)')
        problem = categories_problem(categories, self.ann_file)
        if problem:
            raise BadInputError(problem)
        if self.classes_from_file:
            self._metainfo['classes'] = classes_from_categories(categories)
        classes = list(self.metainfo['classes'])
        _, missing = category_ids_by_name(categories, classes)
        if missing:
            msg = (f"{self.ann_file}: the config's classes {missing} are not among the file's categories "
                   f"({', '.join(sorted(c['name'] for c in categories)) or 'none'})")
            if self.on_bad_sample == 'raise':
                raise BadInputError(msg + "; check metainfo.classes against the file (with on_bad_sample='skip' "
                                    'these classes get no box and no category id)')
            print_log(msg + ': they get no box and no category id', logger='current', level=logging.WARNING)
        unknown = [c for c in categories if c['name'] not in set(classes)]
        if unknown:
            boxes = [len(coco.get_ann_ids(cat_ids=[c['id']])) for c in unknown]
            listed = ', '.join(f"{c['name']!r} (id {c['id']}, {n} box{'es' if n != 1 else ''})"
                               for c, n in zip(unknown, boxes))
            if self.on_bad_sample == 'raise':
                raise BadInputError(
                    f"{self.ann_file}: {len(unknown)} categories of the file are not among the config's "
                    f'{len(classes)} classes (metainfo.classes): {listed}. Add them to metainfo.classes (and '
                    "the detection head's num_classes), or set on_bad_sample='skip' in the dataset config to "
                    'drop their boxes')
            self._dropped_cats = {c['id']: c['name'] for c in unknown}
        return coco

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
            elif ann.get('category_id') in self._dropped_cats:  # on_bad_sample='skip' (else raised at load)
                names = ', '.join(sorted(self._dropped_cats.values()))
                self.skipped[f'boxes (category not in the config: {names})'] += 1
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
