"""Detection boxes get their class by category *name*, on a file whose category ids are non-contiguous,
listed in another order than the config's classes, and (optionally) name classes the config lacks;
the metric and the submission map back to the file's own ids."""
import copy
import functools
import json
import logging
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import DATASETS, METRICS

from projects.allinone.datasets import BadInputError

from challenge_tree import TT100K_NOT_IN_CONFIG, make_challenge_tree
from conftest import REPO

TRACK1 = osp.join(REPO, 'configs', 'allinone.py')


@pytest.fixture(scope='module')
def tree_extra(tmp_path_factory):
    """The challenge tree with three TT100K categories that the config does not list."""
    return make_challenge_tree(str(tmp_path_factory.mktemp('tree_extra')), det_extra_categories=TT100K_NOT_IN_CONFIG)


@functools.lru_cache(maxsize=1)
def competition_config():
    return Config.fromfile(TRACK1)


def det_dataset(tree, split='train', **overrides):
    cfg = competition_config()
    ds = copy.deepcopy((cfg.train_dataloader if split == 'train' else cfg.val_dataloader).det.dataset)
    ds.update(data_root=tree.train_root + 'dec/', pipeline=[], **overrides)
    return DATASETS.build(ds)


def file_boxes(tree, split):
    """``{image id: sorted [(x, y, class name)]}`` as the file says."""
    coco = json.load(open(osp.join(tree.train_root, 'dec', f'{split}.json')))
    name = {c['id']: c['name'] for c in coco['categories']}
    out = {img['id']: [] for img in coco['images']}
    for a in coco['annotations']:
        out[a['image_id']].append((a['bbox'][0], a['bbox'][1], name[a['category_id']]))
    return {k: sorted(v) for k, v in out.items()}


def loaded_boxes(ds):
    classes = ds.metainfo['classes']
    return {info['img_id']: sorted((x['bbox'][0], x['bbox'][1], classes[x['bbox_label']]) for x in info['instances'])
            for info in (ds.get_data_info(i) for i in range(len(ds)))}


def test_labels_follow_names_not_the_files_order(registered, challenge_tree):
    tree = challenge_tree
    ds = det_dataset(tree)
    assert list(ds.metainfo['classes']) == list(tree.det_classes)
    assert ds.cat_ids == [tree.det_id(n) for n in tree.det_classes]  # the file's id of each config name
    assert [c['name'] for c in tree.det_categories] != list(tree.det_classes)  # the file lists another order
    assert loaded_boxes(ds) == file_boxes(tree, 'train')  # every box, each with its own name
    assert sum(map(len, loaded_boxes(ds).values())) == len(tree.det_boxes['train']) and not ds.skipped


def test_a_category_the_config_lacks_is_named_or_skipped(registered, tree_extra):
    with pytest.raises(BadInputError) as e:
        det_dataset(tree_extra)
    msg = str(e.value)
    assert 'train.json: 3 categories of the file are not among the config' in msg
    for name in TT100K_NOT_IN_CONFIG:
        assert f"'{name}' (id {tree_extra.det_id(name)}," in msg
    assert "on_bad_sample='skip'" in msg

    logger = MMLogger.get_current_instance()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        ds = det_dataset(tree_extra, on_bad_sample='skip')
    finally:
        logger.removeHandler(handler)
    extra_ids = {tree_extra.det_id(n) for n in TT100K_NOT_IN_CONFIG}
    n_extra = sum(a['category_id'] in extra_ids for a in tree_extra.det_boxes['train'])
    assert n_extra > 0
    kind = 'boxes (category not in the config: pl10, pm10, w21)'
    assert ds.skipped == {kind: n_extra}
    assert any(f'skipped {n_extra} {kind}' in r.getMessage() for r in records)
    expected = {k: [b for b in v if b[2] not in TT100K_NOT_IN_CONFIG]
                for k, v in file_boxes(tree_extra, 'train').items()}
    assert loaded_boxes(ds) == expected  # the other boxes keep their names


def test_a_config_without_classes_takes_the_files_categories_by_id(registered, challenge_tree):
    tree = challenge_tree
    ds = det_dataset(tree, metainfo=None)
    by_id = sorted(tree.det_categories, key=lambda c: c['id'])
    assert list(ds.metainfo['classes']) == [c['name'] for c in by_id]
    assert ds.cat_ids == [c['id'] for c in by_id]
    assert loaded_boxes(ds) == file_boxes(tree, 'train')
    # the validation file lists the same categories: the same label for each name
    assert det_dataset(tree, split='val', metainfo=None).metainfo['classes'] == ds.metainfo['classes']


def test_a_class_the_file_lacks(registered, challenge_tree, tmp_path):
    tree = challenge_tree
    classes = list(tree.det_classes) + ['not_a_sign']
    with pytest.raises(BadInputError, match=r"the config's classes \['not_a_sign'\] are not among the file's"):
        det_dataset(tree, metainfo=dict(classes=classes))
    ds = det_dataset(tree, metainfo=dict(classes=classes), on_bad_sample='skip')
    assert ds.cat_ids[-1] is None and loaded_boxes(ds) == file_boxes(tree, 'train')
    from projects.allinone.evaluation import SubmissionBuilder
    with pytest.raises(KeyError, match="class 'not_a_sign' .* has no category id"):
        SubmissionBuilder().add('det', [pred_sample(1, [[0, 0, 4, 4]], [len(classes) - 1])], ds)


def pred_sample(img_id, boxes, labels, shape=(100, 100)):
    return dict(img_id=img_id, img_path=f'{img_id}.jpg', ori_shape=shape,
                pred_instances=dict(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                    scores=torch.ones(len(labels)), labels=torch.tensor(labels, dtype=torch.long)))


def perfect_predictions(ds):
    """The dataset's own boxes as predictions (labels as the dataset assigned them)."""
    out = []
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        out.append(pred_sample(info['img_id'], [x['bbox'] for x in info['instances']],
                               [x['bbox_label'] for x in info['instances']], (info['height'], info['width'])))
    return out


def test_submission_and_metric_map_back_to_the_files_ids(registered, challenge_tree):
    tree = challenge_tree
    ds = det_dataset(tree, split='val')
    preds = perfect_predictions(ds)
    from projects.allinone.evaluation import SubmissionBuilder
    builder = SubmissionBuilder(dict(det='dec'))
    builder.add('det', preds, ds)
    coco = json.load(open(osp.join(tree.train_root, 'dec', 'val.json')))
    exported = sorted((d['image_id'], d['category_id'], tuple(d['bbox'])) for d in builder.content['dec'])
    truth = sorted((a['image_id'], a['category_id'], tuple(a['bbox'])) for a in coco['annotations'])
    assert exported == truth  # the file's own category ids

    ann = osp.join(tree.train_root, 'dec', 'val.json')
    scores = {}
    for kind in ('ChallengeCocoMetric', 'CocoMetric'):
        metric = METRICS.build(dict(type=kind, ann_file=ann, metric='bbox'))
        metric.dataset_meta = ds.metainfo
        metric.process({}, copy.deepcopy(preds))
        scores[kind] = metric.evaluate(len(preds))
    new = scores['ChallengeCocoMetric']
    assert new['coco/bbox_mAP_50'] == 1.0
    assert scores['CocoMetric']['coco/bbox_mAP_50'] < 0.5  # mmdet's: label i = the i-th name the file lists
    per_class = new['coco/bbox_AP50_per_class']
    assert list(per_class) == list(ds.metainfo['classes'])
    with_boxes = {c['name'] for c in coco['categories']
                  if any(a['category_id'] == c['id'] for a in coco['annotations'])}
    assert {n for n, v in per_class.items() if not np.isnan(v)} == with_boxes
    assert all(v == pytest.approx(1.0) for n, v in per_class.items() if n in with_boxes)


def test_per_class_ap50_averages_to_the_map(registered, challenge_tree):
    """Imperfect predictions (half the boxes shifted, one class relabelled): the per-class AP at IoU
    0.5 averages to mmdet's bbox_mAP_50 and differs between classes."""
    tree = challenge_tree
    ds = det_dataset(tree, split='val')
    preds = perfect_predictions(ds)
    rng = np.random.RandomState(0)
    for p in preds:
        inst = p['pred_instances']
        for k in range(len(inst['labels'])):
            if rng.rand() < 0.5:
                inst['bboxes'][k] += 20.0
            inst['scores'][k] = float(rng.rand())
        if len(inst['labels']):
            inst['labels'][inst['labels'] == inst['labels'].max()] = 0
    metric = METRICS.build(dict(type='ChallengeCocoMetric', ann_file=osp.join(tree.train_root, 'dec', 'val.json')))
    metric.dataset_meta = ds.metainfo
    metric.process({}, preds)
    out = metric.evaluate(len(preds))
    per_class = [v for v in out['coco/bbox_AP50_per_class'].values() if not np.isnan(v)]
    assert len(set(np.round(per_class, 3))) > 1
    assert np.mean(per_class) == pytest.approx(out['coco/bbox_mAP_50'], abs=5e-4)  # mmdet rounds to 3 decimals


def test_metric_names_a_wrong_annotation_file(registered, challenge_tree):
    tree = challenge_tree
    ds = det_dataset(tree, split='val')
    metric = METRICS.build(dict(type='ChallengeCocoMetric', ann_file=osp.join(tree.train_root, 'dec', 'train.json')))
    metric.dataset_meta = ds.metainfo
    metric.process({}, perfect_predictions(ds))
    with pytest.raises(BadInputError, match=r'train.json: 5 of the 5 evaluated images are not in this annotation file'):
        metric.evaluate(len(ds))


def test_unlabeled_images_without_config_classes_use_the_same_labels(registered, challenge_tree):
    from projects.allinone.datasets import UnlabeledImageDataset
    tree = challenge_tree
    ds = UnlabeledImageDataset(data_prefix=dict(img=tree.test_root + 'dec/test'),
                               ann_file=tree.test_root + 'dec/test.json',
                               categories_file=tree.train_root + 'dec/val.json')
    labeled = det_dataset(tree, split='val', metainfo=None)
    assert ds.metainfo['classes'] == labeled.metainfo['classes'] and ds.cat_ids == labeled.cat_ids
    named = UnlabeledImageDataset(data_prefix=dict(img=tree.test_root + 'dec/test'),
                                  ann_file=tree.test_root + 'dec/test.json', metainfo=dict(classes=tree.det_classes),
                                  categories_file=tree.train_root + 'dec/val.json')
    assert named.cat_ids == [tree.det_id(n) for n in tree.det_classes]
    assert [named.get_data_info(i)['img_id'] for i in range(len(named))] == [
        i['id'] for i in json.load(open(tree.test_root + 'dec/test.json'))['images']]


def test_per_class_iou(registered):
    """ChallengeIoUMetric adds mmseg's per-class IoU (percent), which averages to its mIoU."""
    from mmengine.structures import PixelData
    metric = METRICS.build(dict(type='ChallengeIoUMetric', _scope_='mmseg'))
    metric.dataset_meta = dict(classes=('road', 'sky', 'car', 'bus'))
    gt = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 3]])
    metric.process({}, [dict(pred_sem_seg=PixelData(data=pred[None]).to_dict(),
                             gt_sem_seg=PixelData(data=gt[None]).to_dict())])
    out = metric.evaluate(1)
    # road: 2 of (3 gt + 3 pred - 2); sky: 2 of (2 + 3 - 2); car: 1 of (2 + 1 - 1); bus: 0 of (0 + 0) (255 ignored)
    iou = out['IoU_per_class']
    assert list(iou) == ['road', 'sky', 'car', 'bus']
    assert iou['road'] == pytest.approx(50.0) and iou['sky'] == pytest.approx(66.67)
    assert iou['car'] == pytest.approx(50.0) and np.isnan(iou['bus'])
    assert out['mIoU'] == pytest.approx(np.nanmean([50.0, 66.67, 50.0]), abs=0.01)
