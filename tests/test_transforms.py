"""Multi-branch augmentation and the albumentations wrapper keep samples consistent."""
import numpy as np
import pytest
from mmcv.transforms import BaseTransform
from mmengine.registry import TRANSFORMS


@TRANSFORMS.register_module(force=True)
class _Mark(BaseTransform):
    def __init__(self, tag):
        self.tag = tag

    def transform(self, results):
        results.setdefault('marks', []).append(self.tag)
        return results


def test_one_branch_per_sample_with_the_given_probabilities(registered):
    np.random.seed(0)
    aug = TRANSFORMS.build(dict(type='MultiBranchAugment', names=['hard', 'easy'], probs=[0.8, 0.2], branches=[
        [dict(type='_Mark', tag='jitter'), dict(type='_Mark', tag='affine')],
        [dict(type='_Mark', tag='resize')]]))
    seen = []
    for _ in range(2000):
        r = aug(dict())
        seen.append(r['aug_branch'])
        assert r['marks'] in (['jitter', 'affine'], ['resize'])  # never stacked across branches
        assert (r['aug_branch'] == 'hard') == (r['marks'][0] == 'jitter')
    assert abs(seen.count('hard') / len(seen) - 0.8) < 0.03


def test_bad_branch_config(registered):
    with pytest.raises(ValueError, match='2 branches but 1 probs'):
        TRANSFORMS.build(dict(type='MultiBranchAugment', branches=[[], []], probs=[1.0]))
    with pytest.raises(ValueError, match='positive sum'):
        TRANSFORMS.build(dict(type='MultiBranchAugment', branches=[[]], probs=[0.0]))


def _drawn_sample(rng, with_boxes=True):
    """Image with solid rectangles whose colour encodes their index; seg map = the same layout."""
    img = np.zeros((96, 128, 3), np.uint8) + 30
    seg = np.zeros((96, 128), np.uint8)
    boxes, labels = [], []
    for i in range(4):
        x0, y0 = int(rng.randint(4, 90)), int(rng.randint(4, 60))
        w, h = int(rng.randint(12, 30)), int(rng.randint(12, 30))
        x1, y1 = min(x0 + w, 127), min(y0 + h, 95)
        if any(not (x1 <= b[0] or x0 >= b[2] or y1 <= b[1] or y0 >= b[3]) for b in boxes):
            continue
        img[y0:y1, x0:x1] = (60 * (len(boxes) + 1), 255 - 50 * len(boxes), 40)
        seg[y0:y1, x0:x1] = len(boxes) + 1
        boxes.append([x0, y0, x1, y1])
        labels.append(len(labels))
    from mmdet.structures.bbox import HorizontalBoxes
    return dict(img=img, img_shape=img.shape[:2], gt_seg_map=seg,
                gt_bboxes=HorizontalBoxes(np.array(boxes, np.float32)),
                gt_bboxes_labels=np.array(labels), gt_ignore_flags=np.zeros(len(labels), bool))


@pytest.mark.parametrize('ops', [
    [dict(type='HorizontalFlip', p=1.0)],
    [dict(type='Affine', scale=(0.7, 1.3), translate_percent=(-0.1, 0.1), p=1.0, fill_mask=255)],
    [dict(type='RandomResizedCrop', size=(80, 112), scale=(0.5, 1.0), p=1.0)],
    [dict(type='RandomBrightnessContrast', p=1.0), dict(type='GaussNoise', p=1.0)],
])
def test_albu_keeps_boxes_masks_and_labels_consistent(registered, ops):
    rng = np.random.RandomState(0)
    aug = TRANSFORMS.build(dict(type='AlbuAugment', transforms=ops, min_visibility=0.5))
    for _ in range(10):
        r = _drawn_sample(rng)
        labels0 = r['gt_bboxes_labels'].copy()
        out = aug(r)
        boxes = out['gt_bboxes'].tensor.numpy()
        assert len(boxes) == len(out['gt_bboxes_labels']) == len(out['gt_ignore_flags'])
        assert set(out['gt_bboxes_labels']) <= set(labels0)
        seg = out['gt_seg_map']
        assert seg.shape == out['img'].shape[:2] == tuple(out['img_shape'])
        for b, lab in zip(boxes, out['gt_bboxes_labels']):
            x0, y0, x1, y1 = (int(round(v)) for v in b)
            region = seg[y0:y1, x0:x1]
            # the box still frames its own object: nearly all mask pixels inside are that object
            assert (region == lab + 1).mean() > 0.8, (b, lab)
            ys, xs = np.nonzero(seg == lab + 1)
            assert xs.min() >= x0 - 1 and xs.max() <= x1 and ys.min() >= y0 - 1 and ys.max() <= y1


def test_albu_on_a_classification_sample(registered):
    aug = TRANSFORMS.build(dict(type='AlbuAugment', transforms=[dict(type='ToGray', p=1.0)]))
    out = aug(dict(img=np.random.RandomState(0).randint(0, 255, (32, 32, 3), np.uint8), gt_label=3))
    assert out['gt_label'] == 3
    assert np.all(out['img'][..., 0] == out['img'][..., 1])


def test_albu_follows_the_global_seed(registered):
    """Same numpy seed, same augmentation: albumentations' own generators are seeded from it."""
    ops = [dict(type='RandomBrightnessContrast', p=1.0), dict(type='Affine', rotate=(-20, 20), p=1.0)]
    a = TRANSFORMS.build(dict(type='AlbuAugment', transforms=ops))
    b = TRANSFORMS.build(dict(type='AlbuAugment', transforms=ops))
    img = np.random.RandomState(1).randint(0, 255, (32, 32, 3), np.uint8)
    np.random.seed(0)
    x = a(dict(img=img.copy()))['img']
    np.random.seed(0)
    y = b(dict(img=img.copy()))['img']
    assert np.array_equal(x, y)
    assert not np.array_equal(x, a(dict(img=img.copy()))['img'])  # and it does draw anew each call


def _configured_branch_aug(task, make_sample):
    """The MultiBranchAugment of the demo config's train pipeline of ``task``, built in its scope, its
    mixing branch drawing its extra images from ``make_sample(rng)``."""
    import copy

    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from conftest import DEMO_CFG
    cfg = Config.fromfile(DEMO_CFG)
    ds = cfg.train_dataloader[task].dataset
    t = copy.deepcopy(next(t for t in ds.pipeline if t['type'] == 'MultiBranchAugment'))
    with DefaultScope.overwrite_default_scope(ds['_scope_']):
        aug = TRANSFORMS.build(t)

    class Source:  # what the dataset gives a mixing branch: sample i after the loading transforms
        def __len__(self):
            return 16

        def __getitem__(self, i):
            return make_sample(np.random.RandomState(100 + i))
    aug.bind_source(Source())
    return aug


def _padded_det_sample(rng):
    r = _drawn_sample(rng)
    r.update(img=np.ascontiguousarray(np.pad(r['img'], ((0, 32), (0, 0), (0, 0)), constant_values=30)),
             gt_seg_map=np.pad(r['gt_seg_map'], ((0, 32), (0, 0))))
    r['img_shape'] = r['img'].shape[:2]
    return r


def test_demo_detection_branches_keep_boxes_on_their_objects(registered):
    """Every branch of the configured detection pipeline, on drawn objects: boxes still frame them
    (mosaic: the box holds its label's colour, from whichever of the 4 images it came; the other
    branches: the box holds its object in the label map)."""
    np.random.seed(0)
    aug = _configured_branch_aug('det', _padded_det_sample)
    rng = np.random.RandomState(1)
    seen = set()
    for _ in range(60):
        out = aug(_padded_det_sample(rng))
        seen.add(out['aug_branch'])
        seg, boxes, img = out['gt_seg_map'], out['gt_bboxes'].tensor.numpy(), out['img'].astype(int)
        assert len(boxes) == len(out['gt_bboxes_labels'])
        for b, lab in zip(boxes, out['gt_bboxes_labels']):
            x0, y0, x1, y1 = (int(round(v)) for v in b)
            assert x1 > x0 and y1 > y0
            if out['aug_branch'] != 'mosaic':
                assert (seg[y0:y1, x0:x1] == lab + 1).mean() > 0.75, (out['aug_branch'], b)
            elif min(x1 - x0, y1 - y0) >= 4:  # mosaic moves no label map; colour k belongs to label k
                want = np.array((60 * (lab + 1), 255 - 50 * lab, 40))
                inside = (np.abs(img[y0:y1, x0:x1] - want) < 40).all(-1)
                assert inside.mean() > 0.6, (b, lab)
    assert seen == {'mosaic', 'photometric', 'scale_crop'}


def test_demo_segmentation_branches_keep_the_mask_on_the_image(registered):
    """Every branch of the configured segmentation pipeline: each labelled region stays one colour."""
    import cv2
    np.random.seed(0)

    def sample(rng):
        r = _drawn_sample(rng)
        return dict(img=r['img'], img_shape=r['img_shape'], gt_seg_map=r['gt_seg_map'], seg_fields=['gt_seg_map'])
    aug = _configured_branch_aug('seg', sample)
    rng = np.random.RandomState(2)
    seen = set()
    for _ in range(40):
        out = aug(sample(rng))
        seen.add(out['aug_branch'])
        img, seg = out['img'].astype(float), out['gt_seg_map']
        assert img.shape[:2] == seg.shape
        for v in np.unique(seg):
            if v == 255:
                continue
            inner = cv2.erode((seg == v).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            if inner.sum() > 20:
                assert img[inner].std(0).max() < 12, (out['aug_branch'], v)
    assert seen == {'mosaic', 'photometric', 'scale_crop'}
