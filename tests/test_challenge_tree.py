"""The challenge-layout fixture tree: deterministic, in the layout track1.py reads, with the quirks."""
import filecmp
import json
import os
import os.path as osp

import numpy as np
from PIL import Image

from challenge_tree import TT100K_NOT_IN_CONFIG, make_challenge_tree


def _files(root):
    return sorted(osp.relpath(osp.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_tree_is_deterministic_and_has_the_real_quirks(tmp_path):
    a = make_challenge_tree(str(tmp_path / 'a'))
    b = make_challenge_tree(str(tmp_path / 'b'))
    files = _files(a.root)
    assert files == _files(b.root)
    assert all(filecmp.cmp(osp.join(a.root, f), osp.join(b.root, f), shallow=False) for f in files)
    assert len(a.cls_classes) == 196 and len(a.seg_classes) == 19 and len(a.det_classes) == 45

    train = json.load(open(osp.join(a.train_root, 'dec', 'train.json')))
    ids = [c['id'] for c in train['categories']]
    names = [c['name'] for c in train['categories']]
    assert sorted(names) == sorted(a.det_classes) and names != list(a.det_classes)  # another order
    assert ids != sorted(ids) and sorted(ids) != list(range(1, 46))                 # non-contiguous, unsorted
    with_boxes = {ann['image_id'] for ann in train['annotations']}
    assert any(img['id'] not in with_boxes for img in train['images'])               # images without boxes
    assert min(ann['bbox'][2] for ann in train['annotations']) <= 4                  # boxes a few px wide
    assert min(img['id'] for img in train['images']) > 1000
    for ann in train['annotations']:
        img = next(i for i in train['images'] if i['id'] == ann['image_id'])
        x, y, w, h = ann['bbox']
        assert 0 <= x and x + w <= img['width'] and 0 <= y and y + h <= img['height']
    test = json.load(open(osp.join(a.test_root, 'dec', 'test.json')))
    assert set(test) == {'images'} and len(test['images']) == a.counts['det']['test']

    modes = {Image.open(osp.join(a.train_root, 'cls', 'train', f)).mode
             for f in os.listdir(osp.join(a.train_root, 'cls', 'train'))}
    assert modes == {'L', 'RGB'}                                                     # grayscale JPEGs
    labels = [np.asarray(Image.open(osp.join(a.train_root, 'seg', 'label', 'train', f)))
              for f in sorted(os.listdir(osp.join(a.train_root, 'seg', 'label', 'train')))]
    values = set(np.unique(np.concatenate([v.ravel() for v in labels])).tolist())
    assert 255 in values and max(values - {255}) <= 18
    lines = open(osp.join(a.train_root, 'cls', 'train.txt')).read().split('\n')
    assert lines[0] == '00001.jpg 0' and a.cls_labels['train'][0] == 0


def test_tree_extra_categories(tmp_path):
    tree = make_challenge_tree(str(tmp_path), det_extra_categories=TT100K_NOT_IN_CONFIG)
    train = json.load(open(osp.join(tree.train_root, 'dec', 'train.json')))
    extra_ids = {tree.det_id(n) for n in TT100K_NOT_IN_CONFIG}
    assert len(train['categories']) == 48
    assert {a['category_id'] for a in train['annotations']} & extra_ids
