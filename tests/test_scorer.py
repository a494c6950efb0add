"""Submission export, validation and offline scoring."""
import json

import cv2
import numpy as np
import pytest

from projects.allinone.evaluation import mask_to_polygons, polygons_to_mask
from projects.allinone.evaluation.scorer import GroundTruth, SubmissionError, score, validate


def perfect_submission(root):
    gt = GroundTruth(root, 'val', num_seg_classes=6, num_cls_classes=6)
    coco = json.load(open(gt.dec_file))
    dec = [dict(image_id=a['image_id'], category_id=a['category_id'], bbox=a['bbox'], score=1.0)
           for a in coco['annotations']]
    seg = {}
    for name, path in gt.seg.items():
        lab = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        seg[name] = {str(c): mask_to_polygons(lab == c) for c in np.unique(lab) if c != 255}
    return gt, dict(cls=dict(gt.cls), dec=dec, seg=seg)


def test_perfect_submission_scores_one(demo_data):
    gt, sub = perfect_submission(demo_data)
    s = score(sub, gt)
    assert s['cls'] == 1.0 and s['dec'] == pytest.approx(1.0)
    assert s['seg'] > 0.99  # only the polygonisation loss
    assert s['A'] == pytest.approx((s['cls'] + s['dec'] + s['seg']) / 3)
    assert s['B'] == pytest.approx((s['cls'] + s['dec']) / 2)


def test_wrong_predictions_score_lower(demo_data):
    gt, sub = perfect_submission(demo_data)
    names = list(sub['cls'])
    for n in names[: len(names) // 2]:
        sub['cls'][n] = (sub['cls'][n] + 1) % 6
    sub['dec'] = [dict(d, bbox=[d['bbox'][0] + d['bbox'][2], d['bbox'][1], d['bbox'][2], d['bbox'][3]])
                  for d in sub['dec']]  # shifted by a full width: IoU 0
    s = score(sub, gt)
    assert s['cls'] == pytest.approx(1 - (len(names) // 2) / len(names))
    assert s['dec'] == 0.0


def test_polygon_round_trip_is_nearly_lossless():
    """Blobs with holes: the even-odd rasterisation of the traced contours restores the mask."""
    rng = np.random.RandomState(0)
    agree = []
    for _ in range(20):
        m = np.zeros((96, 128), np.uint8)
        for _ in range(4):
            centre = (int(rng.randint(128)), int(rng.randint(96)))
            axes = (int(rng.randint(5, 30)), int(rng.randint(5, 20)))
            cv2.ellipse(m, centre, axes, float(rng.randint(180)), 0, 360, 1, -1)
        cv2.circle(m, (64, 48), 6, 0, -1)  # a hole where blobs overlap the centre
        back = polygons_to_mask(mask_to_polygons(m), 96, 128)
        inter, union = (m & back).sum(), (m | back).sum()
        agree.append(inter / max(union, 1))
    assert min(agree) > 0.97 and np.mean(agree) > 0.99


@pytest.mark.parametrize('mutate,message', [
    (lambda s: s.pop('seg'), "missing top-level key 'seg'"),
    (lambda s: s.update(extra=1), 'unknown top-level key'),
    (lambda s: s['cls'].pop(next(iter(s['cls']))), 'cls: 1 image(s) have no prediction'),
    (lambda s: s['cls'].update({'nope.jpg': 1}), "cls: unknown image 'nope.jpg'"),
    (lambda s: s['cls'].update({next(iter(s['cls'])): 99}), 'class id must be an int in [0, 6)'),
    (lambda s: s['cls'].update({next(iter(s['cls'])): '3'}), 'class id must be an int'),
    (lambda s: s['dec'][0].update(bbox=[1, 2, -3, 4]), 'dec[0]: bbox must be [x, y, w, h]'),
    (lambda s: s['dec'][0].update(bbox=[1, 2, 3]), 'dec[0]: bbox must be'),
    (lambda s: s['dec'][0].update(category_id=77), 'dec[0]: unknown category_id 77'),
    (lambda s: s['dec'][0].update(image_id=10 ** 9), 'dec[0]: unknown image_id'),
    (lambda s: s['dec'][0].update(score=float('nan')), 'dec[0]: score must be a finite number'),
    (lambda s: s['dec'].append([1, 2]), 'must be an object with image_id'),
    (lambda s: s.update(dec={}), 'dec must be a list'),
    (lambda s: s['seg'][next(iter(s['seg']))].update({'42': []}), 'class id must be in [0, 6)'),
    (lambda s: s['seg'][next(iter(s['seg']))].update({'1': [[1, 2, 3]]}), 'polygons must be lists of >= 3'),
])
def test_each_format_problem_is_named(demo_data, mutate, message):
    gt, sub = perfect_submission(demo_data)
    mutate(sub)
    with pytest.raises(SubmissionError) as e:
        validate(sub, gt)
    assert message in str(e.value)


def test_score_submission_tool_exit_codes(demo_data, tmp_path, capsys):
    from tools.score_submission import main
    gt, sub = perfect_submission(demo_data)
    good, bad = tmp_path / 'good.json', tmp_path / 'bad.json'
    good.write_text(json.dumps(sub))
    sub['dec'][0]['bbox'] = 'x'
    bad.write_text(json.dumps(sub))
    args = ['--num-seg-classes', '6', '--num-cls-classes', '6']
    assert main([str(good), demo_data, '--out', str(tmp_path / 's.json')] + args) == 0
    assert json.load(open(tmp_path / 's.json'))['cls'] == 1.0
    assert main([str(bad), demo_data] + args) == 2
    assert 'dec[0]: bbox' in capsys.readouterr().err
    (tmp_path / 'broken.json').write_text('{"cls": ')
    assert main([str(tmp_path / 'broken.json'), demo_data] + args) == 2
