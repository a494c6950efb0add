"""The demo data generator: deterministic, in the challenge's formats, with consistent labels."""
import hashlib
import json
import os
import os.path as osp

import cv2
import numpy as np

from tools.make_demo_data import CLS_CLASSES, DET_CLASSES, DET_SIZE, SEG_CLASSES, SEG_SIZE, main


def _digest(root):
    h = hashlib.sha1()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            h.update(f.encode())
            with open(osp.join(dirpath, f), 'rb') as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_deterministic(tmp_path):
    a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
    main(['--out', a, '--scale', '0.02'])
    main(['--out', b, '--scale', '0.02'])
    assert _digest(a) == _digest(b)
    c = str(tmp_path / 'c')
    main(['--out', c, '--scale', '0.02', '--seed', '1'])
    assert _digest(a) != _digest(c)


def test_formats_and_consistency(demo_data):
    for split in ('train', 'val'):
        coco = json.load(open(osp.join(demo_data, 'dec', f'{split}.json')))
        assert [c['name'] for c in coco['categories']] == list(DET_CLASSES)
        ids = {im['id'] for im in coco['images']}
        assert coco['annotations']
        for ann in coco['annotations']:
            x, y, w, h = ann['bbox']
            assert ann['image_id'] in ids and 1 <= ann['category_id'] <= len(DET_CLASSES)
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= DET_SIZE and y + h <= DET_SIZE
        for im in coco['images']:
            assert osp.exists(osp.join(demo_data, 'dec', split, im['file_name']))

        names = sorted(os.listdir(osp.join(demo_data, 'seg', 'images', split)))
        assert names
        for n in names:
            lab = cv2.imread(osp.join(demo_data, 'seg', 'label', split, n.replace('.jpg', '.png')),
                             cv2.IMREAD_UNCHANGED)
            assert lab.dtype == np.uint8 and lab.shape == (SEG_SIZE[1], SEG_SIZE[0])
            assert set(np.unique(lab)) <= set(range(len(SEG_CLASSES))) | {255}

        lines = open(osp.join(demo_data, 'cls', f'{split}.txt')).read().split('\n')
        pairs = [ln.split() for ln in lines if ln]
        assert all(len(p) == 2 for p in pairs)
        assert {int(p[1]) for p in pairs} <= set(range(len(CLS_CLASSES)))
        assert all(osp.exists(osp.join(demo_data, 'cls', split, p[0])) for p in pairs)


def test_sign_boxes_are_tight():
    """Each class's drawn shape fills its box: the box is the extent of the drawn pixels (+-1 px)."""
    from tools.make_demo_data import draw_sign
    rng = np.random.RandomState(0)
    for cls in range(len(DET_CLASSES)):
        for r in (7, 12, 16):
            img = np.zeros((64, 64, 3), np.uint8)
            x0, y0, x1, y1 = draw_sign(rng, img, cls, 32, 30, r)
            ys, xs = np.nonzero(img.any(-1))
            assert abs(xs.min() - x0) <= 1 and abs(xs.max() + 1 - x1) <= 1, (cls, r)
            assert abs(ys.min() - y0) <= 1 and abs(ys.max() + 1 - y1) <= 1, (cls, r)


def test_skips_existing(demo_data, capsys):
    assert main(['--out', demo_data]) == 0
    assert 'already present' in capsys.readouterr().out
