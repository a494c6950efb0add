"""Test images without labels: what the challenge gives for its test split.

The challenge scores a submission made on test images whose labels are withheld. This dataset lists
those images (a folder, a text list or a COCO json holding only ``images``) for any task's test
pipeline, so ``tools/test.py --images`` can export predictions with no annotation in sight.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

from mmengine.dataset import BaseDataset
from mmengine.registry import DATASETS as ROOT_DATASETS

from .checked import BadInputError, categories_problem, category_ids_by_name, classes_from_categories

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


@ROOT_DATASETS.register_module()
class UnlabeledImageDataset(BaseDataset):
    """Images to predict on, listed from a folder, a text list or a COCO json.

    Registered in mmengine's root registry so every library's scope (mmdet, mmseg, mmpretrain) finds
    it: keep the task's ``_scope_`` on the dataset so its pipeline builds from the right library.

    Args:
        data_root: root the other paths are relative to.
        data_prefix: ``dict(img='test/')``: the image folder.
        ann_file: ``''``: every image in the folder (sorted by name); ``*.txt``: one image name per
            line (first column; a label column, if any, is ignored); ``*.json``: COCO-style, its
            ``images`` (``id``, ``file_name``) give the order and the ``image_id`` of detection
            results, its ``categories`` (if any) the category ids.
        categories_file: path (not relative to ``data_root``) of a COCO json whose ``categories``
            map the class names of ``metainfo`` to the category ids the submission must use
            (detection; used when ``ann_file`` has no categories of its own; with neither, ids are
            ``1..C`` in class order).
        suffixes: image suffixes taken from a folder.

    Images listed from a folder or a text file get ``img_id`` 1, 2, ... in list order.
    """

    def __init__(self, data_root: str = '', data_prefix: Optional[Dict] = None, ann_file: str = '',
                 categories_file: Optional[str] = None, suffixes: Sequence[str] = IMAGE_SUFFIXES,
                 metainfo: Optional[dict] = None, pipeline=(), test_mode: bool = True, **kwargs):
        self.suffixes = tuple(s.lower() for s in suffixes)
        self.categories_file = categories_file
        self._categories = None
        super().__init__(ann_file=ann_file, metainfo=metainfo, data_root=data_root,
                         data_prefix=dict(data_prefix or dict(img='')), pipeline=list(pipeline),
                         test_mode=True, **kwargs)
        self.cat_ids = self._category_ids()

    def load_data_list(self) -> List[dict]:
        img_dir = self.data_prefix.get('img', self.data_prefix.get('img_path', '')) or self.data_root
        if not osp.isdir(img_dir):
            raise FileNotFoundError(f'image folder not found: {img_dir}')
        ann = self.ann_file
        if not ann:
            names = sorted(f for f in os.listdir(img_dir) if f.lower().endswith(self.suffixes))
            entries = [(i + 1, n, None) for i, n in enumerate(names)]
            source = img_dir
        elif ann.endswith('.json'):
            entries, source = self._from_json(ann), ann
        else:
            entries, source = self._from_list(ann), ann
        if not entries:
            raise BadInputError(f'{source}: no images listed (suffixes {self.suffixes})')
        data = []
        for img_id, name, where in entries:
            path = osp.join(img_dir, name)
            if not osp.isfile(path):
                raise BadInputError(f'{where or source}: image {path} does not exist')
            data.append(dict(img_path=path, img_id=img_id))
        return data

    def _from_list(self, ann: str) -> list:
        entries = []
        with open(ann) as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    entries.append((len(entries) + 1, line.split()[0], f'{ann}, line {i}'))
        return entries

    def _from_json(self, ann: str) -> list:
        try:
            with open(ann) as f:
                content = json.load(f)
        except json.JSONDecodeError as e:
            raise BadInputError(f'{ann}: not valid JSON ({e})') from e
        if not isinstance(content, dict) or not isinstance(content.get('images'), list):
            raise BadInputError(f'{ann}: a COCO-style json with an "images" list is expected')
        entries = []
        for k, img in enumerate(content['images']):
            if not isinstance(img, dict) or 'id' not in img or 'file_name' not in img:
                raise BadInputError(f'{ann}: images[{k}] needs "id" and "file_name", got {img!r}')
            entries.append((img['id'], img['file_name'], f'{ann}, images[{k}]'))
        self._categories = content.get('categories')
        return entries

    def _category_ids(self) -> List[int]:
        """Category id of each class of ``metainfo``, by name (detection results are written with these).

        A config without classes takes the categories' names in the order of their ids, as
        :class:`ChallengeCocoDataset` does, so the labels mean what they meant in training.
        """
        classes = list(self.metainfo.get('classes') or [])
        cats, source = self._categories, self.ann_file
        if not cats and self.categories_file:
            source = self.categories_file
            with open(source) as f:
                cats = json.load(f).get('categories')
        if not cats:
            return list(range(1, len(classes) + 1))
        problem = categories_problem(cats, source)
        if problem:
            raise BadInputError(problem)
        if not classes:
            classes = list(classes_from_categories(cats))
            self._metainfo['classes'] = tuple(classes)
        ids, missing = category_ids_by_name(cats, classes)
        if missing:
            raise BadInputError(f'{source}: categories has no class(es) {missing[:5]} of the config')
        return ids
