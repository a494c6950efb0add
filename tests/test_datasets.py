"""Bad input in each challenge format is named (file, line, image, annotation) or skipped with a count."""
import copy
import json
import os
import os.path as osp
import shutil

import cv2
import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import DATASETS

from projects.allinone.datasets import BadInputError

from conftest import DEMO_CFG, retarget


@pytest.fixture
def data(demo_data, tmp_path):
    """A private copy of the small demo data that a test may break."""
    out = str(tmp_path / 'data')
    shutil.copytree(demo_data, out)
    return out


def dataset_cfg(data, task, **overrides):
    cfg = Config.fromfile(DEMO_CFG)
    ds = retarget(copy.deepcopy(cfg.train_dataloader[task].dataset), 'data/demo/', data + '/')
    ds.update(overrides)
    return ds


def build(cfg):
    return DATASETS.build(copy.deepcopy(cfg))


def edit_coco(data, fn):
    path = osp.join(data, 'dec', 'train.json')
    coco = json.load(open(path))
    fn(coco)
    json.dump(coco, open(path, 'w'))
    return coco


def test_clean_data_loads_unchanged(registered, data):
    for task in ('det', 'seg', 'cls'):
        ds = build(dataset_cfg(data, task))
        assert len(ds) > 0 and not ds.skipped


@pytest.mark.parametrize('breaker,message', [
    (lambda c: c['annotations'][0].update(bbox=[5, 5, 0, 10]), 'annotation id 1: box with non-positive size'),
    (lambda c: c['annotations'][0].update(bbox=[120, 5, 30, 10]), 'lies outside the 128x128 image'),
    (lambda c: c['annotations'][0].update(bbox=[1, 2, 3]), 'bbox must be [x, y, w, h]'),
    (lambda c: c['annotations'][0].update(category_id=99), "category_id 99 is not among the file's categories"),
    (lambda c: c['images'][0].update(file_name='gone.jpg'), 'image file not found'),
])
def test_detection_bad_input(registered, data, breaker, message):
    edit_coco(data, breaker)
    with pytest.raises(BadInputError) as e:
        build(dataset_cfg(data, 'det'))
    assert message in str(e.value) and 'train.json' in str(e.value)


def test_detection_skip_counts(registered, data):
    coco = edit_coco(data, lambda c: (c['annotations'][0].update(bbox=[5, 5, -1, 10]),
                                      c['images'][1].update(file_name='gone.jpg')))
    ds = build(dataset_cfg(data, 'det', on_bad_sample='skip'))
    assert ds.skipped == {'boxes': 1, 'images (file missing)': 1}
    assert len(ds) == len(coco['images']) - 1
    first = ds.get_data_info(0)
    n_anns = sum(a['image_id'] == coco['images'][0]['id'] for a in coco['annotations'])
    assert len(first['instances']) == n_anns - 1  # only the bad box went


@pytest.mark.parametrize('content,message', [('', 'the annotation file is empty'), ('{"images": ', 'not valid JSON'),
                                             ('{"images": [], "annotations": [], "categories": []}',
                                              'no usable image')])
def test_detection_broken_file(registered, data, content, message):
    open(osp.join(data, 'dec', 'train.json'), 'w').write(content)
    with pytest.raises(BadInputError, match=message):
        build(dataset_cfg(data, 'det'))


def test_segmentation_bad_input(registered, data):
    labels = osp.join(data, 'seg', 'label', 'train')
    names = sorted(os.listdir(labels))
    os.remove(osp.join(labels, names[0]))
    with pytest.raises(BadInputError, match=r'00000.jpg: its label map is missing'):
        build(dataset_cfg(data, 'seg'))
    cv2.imwrite(osp.join(labels, names[0]), np.zeros((10, 10), np.uint8))
    with pytest.raises(BadInputError, match=r'label size 10x10 differs from the image'):
        build(dataset_cfg(data, 'seg'))
    cv2.imwrite(osp.join(labels, names[0]), np.full((96, 128), 7, np.uint8))
    with pytest.raises(BadInputError, match=r'00000.png: label values \[7\] outside 0..5 \(255 = ignore\)'):
        build(dataset_cfg(data, 'seg'))
    ds = build(dataset_cfg(data, 'seg', on_bad_sample='skip'))
    assert ds.skipped == {'images (bad label)': 1} and len(ds) == len(names) - 1


@pytest.mark.parametrize('line,message', [('00000.jpg', r'train.txt:1: expected "image_name class_id"'),
                                          ('00000.jpg 6', r'train.txt:1: class id 6 outside 0..5'),
                                          ('nope.jpg 1', r'train.txt:1: image file not found')])
def test_classification_bad_input(registered, data, line, message):
    path = osp.join(data, 'cls', 'train.txt')
    lines = open(path).read().splitlines()
    open(path, 'w').write('\n'.join([line] + lines[1:]) + '\n')
    with pytest.raises(BadInputError, match=message):
        build(dataset_cfg(data, 'cls'))
    ds = build(dataset_cfg(data, 'cls', on_bad_sample='skip'))
    assert sum(ds.skipped.values()) == 1 and len(ds) == len(lines) - 1


def test_classification_empty_list(registered, data):
    open(osp.join(data, 'cls', 'train.txt'), 'w').write('')
    with pytest.raises(BadInputError, match='no usable line'):
        build(dataset_cfg(data, 'cls'))
