"""Test-time augmentation per task (tools/test.py --tta): the merged prediction of flipped and rescaled
views checked by value against the plain model run on each view, the identity view equal to no TTA,
and --tta with --submit and unlabeled images through the command line."""
import copy
import json
import os.path as osp
import subprocess
import sys

import pytest
import torch
from torchvision.ops import batched_nms

from conftest import REPO


@pytest.fixture
def demo_model(registered, demo_cfg):
    from projects.allinone.registry import MODELS
    cfg = copy.deepcopy(demo_cfg)
    cfg.model.tasks.det.test_cfg.score_thr = 0.0  # an untrained detector: keep its (many) low-score boxes
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return cfg, model.eval()


def first_batch(cfg, task, pipeline, batch_size=2):
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    loader = copy.deepcopy(cfg.test_dataloader[task])
    loader.dataset.pipeline = pipeline
    loader.batch_size, loader.num_workers = batch_size, 0
    loader.pop('persistent_workers', None)
    with DefaultScope.overwrite_default_scope('mmdet'):
        return next(iter(Runner.build_dataloader(loader)))


def view(data, k, unflip=False):
    """View ``k`` of a TTA batch as a plain batch; ``unflip``: its samples claim no flip, so the model
    returns predictions in the flipped image's frame (the test maps them back itself)."""
    samples = copy.deepcopy(data['data_samples'][k])
    if unflip:
        for s in samples:
            s.set_metainfo(dict(flip=False, flip_direction=None))
    return dict(inputs=data['inputs'][k], data_samples=samples)


def flipped(data, k):
    return data['data_samples'][k][0].metainfo.get('flip', False)


def test_flip_and_scale_views_merge_by_value(demo_model):
    from projects.allinone.engine.tta import MultiTaskTTAModel
    cfg, model = demo_model
    tta = MultiTaskTTAModel(module=model, tta=cfg.tta_model.tta)
    assert tta.tta_tasks == ['det', 'seg', 'cls']
    with torch.no_grad():
        # classification: the mean of the scores of the plain and the flipped image
        data = first_batch(cfg, 'cls', cfg.tta_pipeline.cls)
        assert len(data['inputs']) == 2 and flipped(data, 1)
        merged = tta.test_step(dict(cls=data))
        scores = [torch.stack([s.pred_score for s in model.test_step(dict(cls=view(data, k)))]) for k in range(2)]
        got = torch.stack([s.pred_score for s in merged])
        torch.testing.assert_close(got, (scores[0] + scores[1]) / 2)
        assert not torch.allclose(scores[0], scores[1])  # the flip changes the scores: a real check

        # segmentation: 2 scales x 2 flips; each view's logits (flipped views flipped back here), softmax, mean
        data = first_batch(cfg, 'seg', cfg.tta_pipeline.seg)
        assert len(data['inputs']) == 4
        merged = tta.test_step(dict(seg=data))
        probs = 0
        for k in range(4):
            out = model.test_step(dict(seg=view(data, k, unflip=True)))
            logits = torch.stack([s.seg_logits.data for s in out])
            probs = probs + (logits.flip(-1) if flipped(data, k) else logits).softmax(1)
        want = (probs / 4).argmax(1)
        got = torch.stack([s.pred_sem_seg.data[0] for s in merged])
        assert got.shape == want.shape and torch.equal(got, want)
        assert merged[0].img_path == data['data_samples'][0][0].img_path and 'gt_sem_seg' in merged[0]

        # detection: boxes of every view in the image frame (x mirrored for flipped views), then NMS
        data = first_batch(cfg, 'det', cfg.tta_pipeline.det)
        merged = tta.test_step(dict(det=data))
        views = [model.test_step(dict(det=view(data, k, unflip=True))) for k in range(4)]
        for i, result in enumerate(merged):
            width = data['data_samples'][0][i].ori_shape[1]
            boxes, scores, labels = [], [], []
            for k in range(4):
                pred = views[k][i].pred_instances
                b = pred.bboxes.clone()
                if flipped(data, k):
                    b[:, [0, 2]] = width - pred.bboxes[:, [2, 0]]
                boxes.append(b)
                scores.append(pred.scores)
                labels.append(pred.labels)
            boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
            keep = batched_nms(boxes, scores, labels, 0.6)[:100]
            assert len(result.pred_instances) == len(keep) > 0
            torch.testing.assert_close(result.pred_instances.scores, scores[keep])
            # boxes of equal score may come in another order from mmcv's NMS: compare as sorted rows
            got = result.pred_instances
            torch.testing.assert_close(torch.tensor(rows(got.bboxes, got.scores, got.labels)),
                                       torch.tensor(rows(boxes[keep], scores[keep], labels[keep])))


def rows(boxes, scores, labels):
    """(score, label, box) rows, sorted."""
    return sorted(torch.cat([scores[:, None], labels[:, None].float(), boxes], 1).tolist())


def identity_pipelines(cfg):
    """One view each, the test pipeline's own transforms: TTA must then give the plain predictions."""
    keep = [dict(type='RandomFlip', prob=0.)]
    pipes = copy.deepcopy(cfg.tta_pipeline)
    pipes.det[1].transforms = [[pipes.det[1].transforms[0][0]], keep] + pipes.det[1].transforms[2:]
    pipes.seg[1].transforms = [keep] + pipes.seg[1].transforms[2:]  # the demo's seg test has no resize
    pipes.cls[1].transforms = [keep] + pipes.cls[1].transforms[1:]
    return pipes


@pytest.mark.slow
def test_identity_view_equals_no_tta_in_scores_and_submission(demo_model, tmp_path):
    from mmengine.runner import Runner

    from projects.allinone.engine.tta import use_tta
    cfg, model = demo_model
    ckpt = str(tmp_path / 'model.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), ckpt)
    outputs = {}
    for mode in ('plain', 'tta'):
        run = copy.deepcopy(cfg)
        run.model.tasks.det.test_cfg.score_thr = 0.0
        run.work_dir = str(tmp_path / mode)
        run.load_from = ckpt
        run.test_cfg.submission.out = str(tmp_path / f'{mode}.json')
        if mode == 'tta':
            run.tta_pipeline = identity_pipelines(run)
            assert use_tta(run) == ['det', 'seg', 'cls'] and run.model.type == 'MultiTaskTTAModel'
        Runner.from_cfg(run).test()
        outputs[mode] = (json.load(open(osp.join(run.work_dir, 'leaderboard_test.json'))),
                         json.load(open(run.test_cfg.submission.out)))
    (board, sub), (tta_board, tta_sub) = outputs['plain'], outputs['tta']
    for key in ('det/coco/bbox_mAP_50', 'seg/mIoU', 'cls/accuracy/top1', 'leaderboard/A'):
        assert tta_board[key] == pytest.approx(board[key]), key
    assert tta_sub['cls'] == sub['cls'] and tta_sub['seg'] == sub['seg']
    plain_dets = sorted((d['image_id'], d['category_id'], round(d['score'], 5)) for d in sub['dec'])
    tta_dets = sorted((d['image_id'], d['category_id'], round(d['score'], 5)) for d in tta_sub['dec'])
    assert len(plain_dets) > 0 and tta_dets == plain_dets


@pytest.mark.slow
def test_tta_option_scores_exports_and_predicts_unlabeled_images(demo_model, demo_data, tmp_path):
    """tools/test.py --tta: the leaderboard, --submit (checked and scored by score_submission.py) and
    --images (the unlabeled test split: label loading removed from every view)."""
    from test_tools import small_overrides
    cfg, model = demo_model
    ckpt = str(tmp_path / 'model.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), ckpt)
    test = [sys.executable, osp.join(REPO, 'tools', 'test.py'), osp.join(REPO, 'configs', 'allinone_demo.py'), ckpt,
            '--tta']
    opts = ['--cfg-options'] + small_overrides(demo_data)
    proc = subprocess.run(test + ['--work-dir', str(tmp_path / 'w'), '--submit', str(tmp_path / 'sub.json')] + opts,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test-time augmentation for task(s) ['det', 'seg', 'cls']" in proc.stderr
    assert 'leaderboard A' in proc.stdout + proc.stderr
    score = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'score_submission.py'), str(tmp_path / 'sub.json'),
                            demo_data, '--num-seg-classes', '6', '--num-cls-classes', '6'],
                           capture_output=True, text=True, timeout=300)
    assert score.returncode == 0, score.stdout + score.stderr
    proc = subprocess.run(test + ['--work-dir', str(tmp_path / 'u'), '--submit', str(tmp_path / 'unl.json'),
                                  '--images', f'det={demo_data}/dec/val', f'seg={demo_data}/seg/images/val',
                                  f'cls={demo_data}/cls/val', '--image-list', f'det={demo_data}/dec/val.json'] + opts,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    labeled, unlabeled = json.load(open(tmp_path / 'sub.json')), json.load(open(tmp_path / 'unl.json'))
    assert unlabeled['seg'] == labeled['seg']
    assert sorted(map(json.dumps, unlabeled['dec'])) == sorted(map(json.dumps, labeled['dec']))
    assert sorted(unlabeled['cls'].items()) == sorted(labeled['cls'].items())


def test_without_tta_keys_the_option_says_what_is_missing(registered):
    from mmengine.config import Config

    from projects.allinone.engine.tta import use_tta
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'allinone_demo.py'))
    cfg.tta_pipeline.pop('seg')
    with pytest.raises(KeyError, match=r"\['seg'\] need both a tta_pipeline and a tta_model.tta entry"):
        use_tta(copy.deepcopy(cfg))
    cfg.tta_model = None
    with pytest.raises(SystemExit, match='no tta_model / tta_pipeline'):
        use_tta(cfg)
