"""Mixing transforms (Mosaic, MixUp, RandomMosaic) inside a MultiBranchAugment branch.

Hand-made samples with known geometry: each image is one flat colour with one box whose label is the
image's index (detection), or a label map whose left / right halves encode the image's index
(segmentation). Every dataset read is recorded, so the tests see which images each sample drew.
"""
import copy

import numpy as np
import pytest
from mmcv.transforms import BaseTransform
from mmengine.dataset import BaseDataset, ConcatDataset
from mmengine.registry import TRANSFORMS

# (h, w) of each hand-made image, its box (x0, y0, x1, y1) in that image
SIZES = [(32, 32), (64, 32), (64, 64), (16, 64), (32, 64), (48, 48)]
BOXES = [(2, 3, 10, 12), (4, 8, 20, 40), (10, 10, 30, 50), (0, 2, 60, 14), (6, 6, 50, 30), (8, 4, 40, 44)]


def colour(i):
    return (20 + 30 * i, 200 - 25 * i, 7 * i)


@TRANSFORMS.register_module(force=True)
class _MakeSample(BaseTransform):
    """'Loads' hand-made sample ``sample_idx`` and records the read in ``reads``."""

    def __init__(self, reads):
        self.reads = reads

    def transform(self, results):
        from mmdet.structures.bbox import HorizontalBoxes
        i = results['sample_idx']
        self.reads.append(i)
        h, w = SIZES[i]
        img = np.empty((h, w, 3), np.uint8)
        img[:] = colour(i)
        seg = np.empty((h, w), np.uint8)
        seg[:, :w // 2], seg[:, w // 2:] = 2 * i, 2 * i + 1
        return dict(results, img=img, img_shape=(h, w), ori_shape=(h, w), gt_seg_map=seg, seg_fields=['gt_seg_map'],
                    gt_bboxes=HorizontalBoxes(np.array([BOXES[i]], np.float32)),
                    gt_bboxes_labels=np.array([i]), gt_ignore_flags=np.zeros(1, bool))


class HandMade(BaseDataset):
    def __init__(self, pipeline, n=len(SIZES)):
        self.n = n
        super().__init__(pipeline=pipeline, serialize_data=False)

    def load_data_list(self):
        return [dict(img_id=i) for i in range(self.n)]


def handmade(reads, pipeline=()):
    return HandMade([dict(type='_MakeSample', reads=reads), *pipeline])


def _flat(reads, aug):
    """The hand-made dataset with ``aug`` in its own pipeline, bound as the project's datasets bind."""
    from projects.allinone.datasets import MixingPipelineMixin

    class Flat(MixingPipelineMixin, HandMade):
        pass
    return Flat([dict(type='_MakeSample', reads=reads), aug])


def _mosaic_boxes(order, img_scale=(64, 64)):
    """Expected boxes of mmdet's Mosaic with its centre at ``img_scale`` (center_ratio_range 1):
    image ``order[q]`` scaled to fit ``img_scale`` and pasted with its inner corner on the centre."""
    W, H = img_scale
    out = []
    for q, i in enumerate(order):  # top-left, top-right, bottom-left, bottom-right
        h, w = SIZES[i]
        s = min(H / h, W / w)
        wq, hq = int(w * s), int(h * s)
        dx = W - wq if q in (0, 2) else W
        dy = H - hq if q in (0, 1) else H
        x0, y0, x1, y1 = BOXES[i]
        out.append([x0 * s + dx, y0 * s + dy, x1 * s + dx, y1 * s + dy])
    return np.array(out, np.float32)


MOSAIC = dict(type='Mosaic', img_scale=(64, 64), center_ratio_range=(1.0, 1.0), pad_val=0)


def test_mosaic_in_a_branch_through_mmdets_wrapper(registered):
    """Only the mosaic branch reads 3 more images; their boxes land where the mosaic puts them."""
    from mmdet.datasets import MultiImageMixDataset
    reads = []
    ds = MultiImageMixDataset(handmade(reads), pipeline=[dict(
        type='MultiBranchAugment', names=['mosaic', 'plain'], probs=[0.5, 0.5], branches=[[MOSAIC], []])])
    np.random.seed(0)
    seen = {'mosaic': 0, 'plain': 0}
    for k in range(40):
        n0 = len(reads)
        out = ds[k % len(SIZES)]
        drawn = reads[n0:]
        branch = out['aug_branch']
        seen[branch] += 1
        if branch == 'plain':
            assert drawn == [k % len(SIZES)], 'a branch that does not mix reads nothing more'
            assert out['img'].shape[:2] == SIZES[drawn[0]]
            np.testing.assert_array_equal(out['gt_bboxes'].tensor.numpy(), [BOXES[drawn[0]]])
            continue
        assert len(drawn) == 4 and drawn[0] == k % len(SIZES)
        np.testing.assert_allclose(out['gt_bboxes'].tensor.numpy(), _mosaic_boxes(drawn), rtol=0, atol=1e-4)
        np.testing.assert_array_equal(out['gt_bboxes_labels'], drawn)  # labels stay with their boxes
        img = out['img']
        assert img.shape == (128, 128, 3)
        for q, i in enumerate(drawn):  # the pixel just inside the centre of each quadrant is that image's
            y = 63 if q < 2 else 64
            x = 63 if q in (0, 2) else 64
            assert tuple(img[y, x]) == colour(i), (q, i)
    assert seen['mosaic'] > 10 and seen['plain'] > 10
    assert len(reads) == 40 + 3 * seen['mosaic']


def test_flat_pipeline_equals_the_wrapper(registered):
    """A dataset that binds its pipeline draws the same images and gives the same samples as mmdet's
    MultiImageMixDataset with the pipeline split before MultiBranchAugment (same seed)."""
    from mmdet.datasets import MultiImageMixDataset
    aug = dict(type='MultiBranchAugment', names=['hard', 'easy'], probs=[0.7, 0.3], branches=[
        [dict(MOSAIC), dict(type='RandomAffine', scaling_ratio_range=(0.8, 1.2), border=(-32, -32)),
         dict(type='MixUp', img_scale=(64, 64), ratio_range=(0.8, 1.2), pad_val=0)],
        [dict(type='RandomFlip', prob=0.5)]])
    reads_w, reads_f = [], []
    wrapped = MultiImageMixDataset(handmade(reads_w), pipeline=[copy.deepcopy(aug)])
    flat = _flat(reads_f, copy.deepcopy(aug))
    for name, ds in (('wrapped', wrapped), ('flat', flat)):
        np.random.seed(3)
        outs = [ds[k % len(SIZES)] for k in range(24)]
        if name == 'wrapped':
            want = outs
    for a, b in zip(want, outs):
        assert a['aug_branch'] == b['aug_branch']
        np.testing.assert_array_equal(a['img'], b['img'])
        np.testing.assert_array_equal(a['gt_bboxes'].tensor.numpy(), b['gt_bboxes'].tensor.numpy())
        np.testing.assert_array_equal(a['gt_bboxes_labels'], b['gt_bboxes_labels'])
    assert reads_w == reads_f
    hard = sum(o['aug_branch'] == 'hard' for o in outs)
    assert 0 < hard < 24
    # hard: the sample + 3 for Mosaic + 2 for MixUp (its get_indexes reads one to check it has boxes)
    assert len(reads_f) == 24 + 5 * hard


def test_mosaic_then_mixup_each_get_their_own_images(registered):
    """Mosaic gets the first 3 extra images, MixUp the last: known boxes after both."""
    reads = []
    ds = _flat(reads, dict(type='MultiBranchAugment', names=['mix'], branches=[[
        dict(MOSAIC), dict(type='MixUp', img_scale=(128, 128), ratio_range=(1.0, 1.0), flip_ratio=1.0, pad_val=0)]]))
    np.random.seed(1)
    for k in range(8):
        n0 = len(reads)
        out = ds[k % len(SIZES)]
        drawn = reads[n0:]
        assert len(drawn) == 6
        # all indexes are drawn before any image is loaded: the sample, MixUp's look at its candidate
        # (mmdet's MixUp.get_indexes reads it to check it has boxes), Mosaic's 3, MixUp's image
        mosaic, mixed = [drawn[0]] + drawn[2:5], drawn[5]
        assert drawn[1] == mixed
        h, w = SIZES[mixed]
        s = min(128 / h, 128 / w)  # MixUp scales its image to fit the 128 x 128 mosaic, top-left, unflipped
        want = np.concatenate([_mosaic_boxes(mosaic), np.array([BOXES[mixed]], np.float32) * s])
        np.testing.assert_allclose(out['gt_bboxes'].tensor.numpy(), want, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(out['gt_bboxes_labels'], mosaic + [mixed])
        # pixel (64, 64): the mosaic's bottom-right image, averaged with the mixed image where it reaches
        under = np.array(colour(mixed), np.float32) if min(int(h * s), int(w * s)) > 64 else 0.0
        want_px = np.floor(0.5 * np.array(colour(mosaic[3]), np.float32) + 0.5 * under)
        np.testing.assert_array_equal(out['img'][64, 64], want_px)


def test_random_mosaic_in_a_branch_through_mmsegs_wrapper(registered):
    """mmseg's RandomMosaic in a branch: each label-map quadrant holds its image's labels, the rest is
    ignore (255); only the mosaic branch reads more images."""
    from mmseg.datasets import MultiImageMixDataset
    reads = []
    ds = MultiImageMixDataset(ConcatDataset([handmade(reads)]), pipeline=[dict(
        _scope_='mmseg', type='MultiBranchAugment', names=['mosaic', 'plain'], probs=[0.5, 0.5], branches=[
            [dict(type='RandomMosaic', prob=1.0, img_scale=(32, 64), center_ratio_range=(1.0, 1.0))], []])])
    np.random.seed(2)
    n_mosaic = 0
    for k in range(30):
        n0 = len(reads)
        out = ds[k % len(SIZES)]
        drawn = reads[n0:]
        if out['aug_branch'] == 'plain':
            assert drawn == [k % len(SIZES)]
            continue
        n_mosaic += 1
        assert len(drawn) == 4
        want = np.full((64, 128), 255, np.uint8)
        for q, i in enumerate(drawn):
            h, w = SIZES[i]
            s = min(32 / h, 64 / w)
            hq, wq = int(h * s), int(w * s)
            x0 = 64 - wq if q in (0, 2) else 64
            y0 = 32 - hq if q in (0, 1) else 32
            want[y0:y0 + hq, x0:x0 + wq // 2] = 2 * i          # the image's left half ...
            want[y0:y0 + hq, x0 + wq // 2:x0 + wq] = 2 * i + 1  # ... and its right half, not mirrored
        np.testing.assert_array_equal(out['gt_seg_map'], want)
        assert out['img'].shape[:2] == (64, 128)
        # mmseg writes the mosaic's (h, w, c) here; a prediction resizing to a 3-d ori_shape would fail
        assert out['img_shape'] == out['ori_shape'] == (64, 128)
    assert 5 < n_mosaic < 25
    assert len(reads) == 30 + 3 * n_mosaic


def test_cached_mosaic_in_a_branch_reads_nothing_more(registered):
    """mmdet's CachedMosaic mixes from its cache: no extra reads, and only its branch's samples fill it."""
    reads = []
    aug_cfg = dict(type='MultiBranchAugment', names=['cached', 'plain'], probs=[0.5, 0.5], branches=[
        [dict(type='CachedMosaic', img_scale=(64, 64), max_cached_images=10, pad_val=0)], []])
    ds = _flat(reads, aug_cfg)
    np.random.seed(0)
    branches = [ds[k % len(SIZES)]['aug_branch'] for k in range(30)]
    assert len(reads) == 30
    cached = ds.pipeline.transforms[1].branches[0].transforms[0]
    assert len(cached.results_cache) == min(10, branches.count('cached'))
    assert 5 < branches.count('cached') < 25


def test_mixing_needs_a_source_and_sits_directly_in_its_branch(registered):
    aug = TRANSFORMS.build(dict(type='MultiBranchAugment', names=['mosaic'], branches=[[dict(MOSAIC)]]))
    assert aug.mixes
    with pytest.raises(RuntimeError, match="branch 'mosaic' holds Mosaic.*MultiImageMixDataset"):
        aug(dict(img=np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(ValueError, match="branch 'hard': Mosaic is nested inside RandomApply"):
        TRANSFORMS.build(dict(type='MultiBranchAugment', names=['hard', 'easy'], branches=[
            [dict(type='RandomApply', transforms=[dict(MOSAIC)], prob=0.5)], []]))
    plain = TRANSFORMS.build(dict(type='MultiBranchAugment', branches=[[dict(type='RandomFlip', prob=0.5)], []]))
    assert not plain.mixes and plain.get_indexes(list(range(5))) == []


def _always_on(cfg):
    """``cfg`` with every ``prob`` / ``p`` set to 1."""
    if isinstance(cfg, dict):
        return {k: (1.0 if k in ('prob', 'p') else _always_on(v)) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(_always_on(v) for v in cfg)
    return cfg


def test_competition_branches_run_on_the_challenge_layout(registered, tmp_path):
    """Every branch of every task of configs/allinone.py (the winners' branches for detection and
    segmentation), on a small tree in the challenge layout: it runs, its name reaches the packed
    sample, boxes stay inside the image, label maps keep the image's size and the label range; and
    mosaic is scheduled off for the last tenth of training."""
    import os.path as osp

    import torch
    from bench_aug_loading import make_track1_tree
    from mmengine.config import Config
    from mmengine.registry import DATASETS, DefaultScope

    from conftest import REPO
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'allinone.py'))
    root = make_track1_tree(str(tmp_path), n=4, det_size=(320, 320), seg_size=(320, 180), cls_size=(160, 120),
                            det_classes=cfg.det_classes)
    want = dict(det=(['hard', 'easy'], 'hard'), seg=(['mosaic', 'multiscale'], 'mosaic'),
                cls=(['autoaugment', 'erasing'], None))
    for task, (names, mixing) in want.items():
        ds_cfg = copy.deepcopy(cfg.train_dataloader[task].dataset.to_dict())
        ds_cfg['data_root'] = osp.join(root, {'det': 'dec'}.get(task, task)) + '/'
        aug = next(t for t in ds_cfg['pipeline'] if t['type'] == 'MultiBranchAugment')
        assert aug['names'] == names
        if mixing:
            assert aug['schedule'] == [dict(at_frac=0.9, probs={mixing: 0.0})]
        branches = copy.deepcopy(aug['branches'])
        for (name, every_op) in [(n, e) for n in names for e in (False, True)]:
            aug['probs'] = [float(n == name) for n in names]
            # every_op: each random op of the branches always on (OneOf still picks one), so that a
            # rare op (grayscale at p 0.1, a noise op) cannot hide a bad output
            aug['branches'] = _always_on(copy.deepcopy(branches)) if every_op else branches
            with DefaultScope.overwrite_default_scope(ds_cfg['_scope_']):
                ds = DATASETS.build(copy.deepcopy(ds_cfg))
            np.random.seed(0)
            for i in range(2):
                out = ds[i]
                sample, img = out['data_samples'], out['inputs']
                assert sample.metainfo['aug_branch'] == name
                assert img.dtype == torch.uint8, (task, name)  # no transform left a float image behind
                h, w = img.shape[-2:]
                if task == 'det':
                    boxes = sample.gt_instances.bboxes.numpy()
                    assert len(boxes) > 0 or name == 'easy'
                    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
                elif task == 'seg':
                    seg = sample.gt_sem_seg.data
                    assert tuple(seg.shape[-2:]) == (h, w) == (896, 896)
                    assert set(np.unique(seg.numpy())) <= set(range(19)) | {255}
