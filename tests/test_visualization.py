"""Seeing what the model does: the inferencer, tools/infer.py, test.py --show-dir, the validation and test
pictures hook, browse_dataset, analyze_logs, compare_runs, and the progress bars."""
import glob
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def read_png(path):
    """The decoded RGB picture of a well-formed PNG file."""
    import mmcv
    with open(path, 'rb') as f:
        assert f.read(8) == PNG_MAGIC, f'{path} is not a PNG'
    img = mmcv.imread(path, channel_order='rgb')
    assert img is not None and img.ndim == 3 and img.shape[2] == 3 and img.size > 0, path
    return img


def assert_same_prediction(task, ours, ref):
    """The same prediction, number for number (both ran the image alone through the same model)."""
    if task == 'det':
        assert len(ref.pred_instances) > 0
        for key in ('labels', 'scores', 'bboxes'):
            assert torch.equal(getattr(ours.pred_instances, key), getattr(ref.pred_instances, key)), key
    elif task == 'seg':
        assert torch.equal(ours.pred_sem_seg.data, ref.pred_sem_seg.data)
    else:
        assert torch.equal(ours.pred_label, ref.pred_label) and torch.equal(ours.pred_score, ref.pred_score)


def log_text(work_dir):
    return '\n'.join(open(p).read() for p in glob.glob(osp.join(work_dir, '*', '*.log')))


@pytest.mark.slow
def test_inferencer_equals_the_test_loop_and_the_hook_draws_every_task(registered, trained_demo, tmp_path):
    import mmcv
    from mmengine.config import Config
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    from projects.allinone.apis import AllInOneInferencer

    class Recorder(Hook):
        def __init__(self):
            self.outputs = {}

        def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            for s in outputs:
                self.outputs.setdefault(runner.test_loop.current_task, {})[s.img_path] = s

    # the test as tools/test.py runs it (its config, the checkpoint), recording every task's predictions
    cfg = Config.fromfile(trained_demo.config)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.load_from = trained_demo.checkpoint
    cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [
        dict(type='MultiTaskVisualizationHook', draw=True, interval=5, test_out_dir=str(tmp_path / 'show'),
             max_per_task=2, min_size=128)]
    runner = Runner.from_cfg(cfg)
    recorder = Recorder()
    runner.register_hook(recorder)
    runner.val()
    runner.test()
    tasks = list(recorder.outputs)
    assert sorted(tasks) == ['cls', 'det', 'seg']

    inferencer = AllInOneInferencer(trained_demo.config, trained_demo.checkpoint, device='cpu', show_progress=False)
    assert sorted(inferencer.tasks) == sorted(tasks)
    for task, by_path in recorder.outputs.items():
        paths = sorted(by_path)[:4]
        result = inferencer(paths, return_datasamples=True, tasks=[task])
        assert not result['errors'] and len(result['predictions']) == len(paths)
        for path, pred in zip(paths, result['predictions']):
            assert set(pred) == {'input', task}
            assert_same_prediction(task, pred[task], by_path[path])
        # an image given as an array (BGR, as OpenCV reads it) is predicted as its file is
        arr = inferencer([mmcv.imread(paths[0])], return_datasamples=True, tasks=[task])['predictions'][0]
        assert_same_prediction(task, arr[task], by_path[paths[0]])
    # plain-python predictions name the classes of each task's dataset
    plain = inferencer(sorted(recorder.outputs['det'])[:1])['predictions'][0]
    det_classes = list(inferencer.dataset_metas['det']['classes'])
    assert plain['det']['label_names'] == [det_classes[i] for i in plain['det']['labels']]
    assert plain['cls']['pred_class'] == list(inferencer.dataset_metas['cls']['classes'])[plain['cls']['pred_label']]
    assert plain['seg']['sem_seg'].shape == (128, 128)

    # test pictures: at most 2 per task, ground truth left of the prediction for boxes and label maps
    for task in tasks:
        files = sorted(glob.glob(str(tmp_path / 'show' / task / '*.png')))
        assert len(files) == 2, (task, files)
        for f in files:
            img = read_png(f)
            if task == 'cls':
                continue
            src = mmcv.imread(next(p for p in recorder.outputs[task]
                                   if osp.splitext(osp.basename(p))[0] == osp.splitext(osp.basename(f))[0]))
            scale = 128 / min(src.shape[:2])
            h, w = round(src.shape[0] * scale), round(src.shape[1] * scale)
            assert img.shape[:2] == (h, 2 * w)
            assert not np.array_equal(img[:, :w], img[:, w:])  # ground truth and prediction differ
    # validation pictures went to the runner's visualizer backends, one per task batch
    vis = [osp.basename(p) for p in glob.glob(str(tmp_path / 'work' / '*' / 'vis_data' / 'vis_image' / '*.png'))]
    assert {re.sub(r'_\d+_\d+\.png$', '', v) for v in vis} == {'val_det', 'val_seg', 'val_cls'}
    # the log names each task's loader: per batch, and in the summary line after the loop
    log = log_text(str(tmp_path / 'work'))
    counts = ', '.join(f'{t} {len(runner.test_loop.dataloaders[t])}' for t in runner.test_loop.dataloaders)
    assert f'Iter(test) [{counts}]' in log and f'Iter(val) [{counts}]' in log
    assert re.search(r'Iter\(test\) det \[1/6\]', log) and re.search(r'Iter\(test\) cls \[ 1/15\]', log)
    assert f'Iter(val) [{counts}]' in log_text(trained_demo.work_dir)  # validation inside training too


@pytest.mark.slow
def test_infer_tool_pictures_json_and_bad_inputs(registered, trained_demo, tmp_path, capsys):
    import infer
    images = tmp_path / 'images'
    images.mkdir()
    det_val = sorted(glob.glob(osp.join(trained_demo.data, 'dec', 'val', '*.jpg')))[:2]
    for p in det_val:
        shutil.copy(p, images)
    (images / 'broken.jpg').write_bytes(b'not an image at all')
    (images / 'notes.txt').write_text('not an image: left out of the folder listing')
    seg_img = sorted(glob.glob(osp.join(trained_demo.data, 'seg', 'images', 'val', '*.jpg')))[0]
    out = tmp_path / 'out'
    rc = infer.main([str(images), seg_img, trained_demo.config, trained_demo.checkpoint, '--out-dir', str(out),
                     '--min-size', '96'])
    err = capsys.readouterr().err
    assert rc == 1 and 'broken.jpg: cannot read the image' in err and '1 of 4 image(s)' in err
    preds = json.load(open(out / 'predictions.json'))
    assert [p['input'] for p in preds] == [osp.splitext(osp.basename(p))[0] for p in det_val] + ['00000_3']
    for p in preds:
        assert set(p) == {'input', 'det', 'seg', 'cls'}
        assert len(p['det']['bboxes']) == len(p['det']['scores']) == len(p['det']['labels'])
        assert abs(sum(p['cls']['pred_scores']) - 1) < 1e-4 and 0 <= p['cls']['pred_label'] < 6
        label_map = read_png(str(out / p['seg']['label_map']))[..., 0]
        assert label_map.shape == tuple(p['seg']['shape']) and label_map.max() < 6
        assert abs(sum(p['seg']['class_fractions'].values()) - 1) < 1e-3
    pictures = sorted(os.listdir(out / 'vis'))
    assert pictures == sorted(p['input'] + '.png' for p in preds)
    panel = read_png(str(out / 'vis' / pictures[0]))
    assert panel.shape[1] > 3 * 96  # three task panels side by side

    # one task; a task the config does not have; a checkpoint without a task's weights
    assert infer.main([det_val[0], trained_demo.config, trained_demo.checkpoint, '--tasks', 'seg', '--no-vis',
                       '--out-dir', str(tmp_path / 'seg_only')]) == 0
    assert set(json.load(open(tmp_path / 'seg_only' / 'predictions.json'))[0]) == {'input', 'seg'}
    assert not osp.exists(tmp_path / 'seg_only' / 'vis')
    with pytest.raises(SystemExit, match=r"\['lane'\] are not tasks of the config"):
        infer.main([det_val[0], trained_demo.config, trained_demo.checkpoint, '--tasks', 'lane'])
    ckpt = torch.load(trained_demo.checkpoint, map_location='cpu', weights_only=False)
    ckpt['state_dict'] = {k: v for k, v in ckpt['state_dict'].items() if not k.startswith('tasks.seg.')}
    no_seg = str(tmp_path / 'no_seg.pth')
    torch.save(ckpt, no_seg)
    with pytest.raises(SystemExit, match=r"no_seg.pth has no weights for task\(s\) \['seg'\]"):
        infer.main([det_val[0], trained_demo.config, no_seg, '--tasks', 'seg', 'det'])
    assert infer.main([det_val[0], trained_demo.config, no_seg, '--no-vis', '--out-dir', str(tmp_path / 'no_seg')]) == 0
    assert set(json.load(open(tmp_path / 'no_seg' / 'predictions.json'))[0]) == {'input', 'det', 'cls'}
    with pytest.raises(SystemExit, match='no image files'):
        infer.main([str(tmp_path / 'seg_only'), trained_demo.config, trained_demo.checkpoint])


@pytest.mark.slow
def test_analyze_logs_on_a_trained_run(trained_demo, tmp_path):
    import analyze_logs
    assert analyze_logs.main([trained_demo.work_dir, '--names', 'demo', '--out', str(tmp_path)]) == 0
    series = json.load(open(tmp_path / 'analyze.json'))['series']['demo']
    for task in ('det', 'seg', 'cls'):  # a log row per iteration of the 4
        for key in ('loss', 'grad_norm', 'grad_norm_agg', 'weight'):
            assert [s for s, _ in series[f'{task}.{key}']] == [1, 2, 3, 4]
    logged = [json.loads(line) for line in open(glob.glob(osp.join(trained_demo.work_dir, '*', 'vis_data',
                                                                    'scalars.json'))[0])]
    assert [v for _, v in series['det.grad_norm']] == [r['det.grad_norm'] for r in logged if 'det.grad_norm' in r]
    assert {k for k in series if k.startswith('cos.')} == {'cos.det-seg', 'cos.det-cls', 'cos.seg-cls'}
    read_png(str(tmp_path / 'gradients.png'))


def test_browse_dataset_captions_each_sample_with_its_branch(registered, demo_small_config, tmp_path, capsys):
    import browse_dataset
    out = tmp_path / 'browse'
    assert browse_dataset.main([demo_small_config, '--task', 'det', 'seg', '--num', '6', '--per-page', '4',
                                '--cols', '2', '--cell', '96', '--out-dir', str(out)]) == 0
    assert sorted(os.listdir(out)) == ['browse_det.json', 'browse_det_0.png', 'browse_det_1.png', 'browse_seg.json',
                                       'browse_seg_0.png', 'browse_seg_1.png']
    names = {'mosaic', 'photometric', 'scale_crop'}  # the demo's branches of both tasks
    for name, size in (('det', (128, 128)), ('seg', (128, 96))):
        report = json.load(open(out / f'browse_{name}.json'))
        branches = [s['branch'] for s in report['samples']]
        assert len(branches) == 6 and set(branches) == names  # all taken, with this seed
        assert report['branches'] == {b: branches.count(b) for b in names}
        for s in report['samples']:  # photometric keeps the image size, mosaic cuts a window of it
            if s['branch'] in ('photometric', 'mosaic'):
                assert (s['width'], s['height']) == size
        assert read_png(str(out / f'browse_{name}_0.png')).shape[0] > 2 * 96  # two rows of samples
    printed = capsys.readouterr().out
    assert re.search(r'det: 6 samples, branches: mosaic \d, photometric \d, scale_crop \d', printed)
    with pytest.raises(SystemExit, match=r"\['lane'\] not in train_dataloader"):
        browse_dataset.main([demo_small_config, '--task', 'lane'])


def _scalar_file(work_dir, stamp, rows):
    path = osp.join(work_dir, stamp, 'vis_data', 'scalars.json')
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        for r in rows:
            f.write(json.dumps(r) + '\n')


def _train_row(step, scale=1.0, cos=None):
    row = {'loss': 3.0 / step, 'step': step, 'lr': 1e-3}
    for i, t in enumerate(('det', 'seg')):
        row.update({f'{t}.loss': (i + 1.0) / step, f'{t}.grad_norm': scale * (i + 1) * step,
                    f'{t}.grad_norm_agg': scale * (i + 1), f'{t}.weight': 1.0 / step})
    if cos is not None:
        row['cos.det-seg'] = cos
    return row


def _fake_resumed_run(work_dir, scale, board):
    """Two segments: the first logged steps 1-6 and validated at 4; killed, resumed from iteration 4."""
    _scalar_file(work_dir, '20260101_000000',
                 [_train_row(s, scale * 100, cos=0.5) for s in range(1, 7)] + [{'leaderboard/A': 0.1, 'step': 4}])
    _scalar_file(work_dir, '20260101_010000', [_train_row(s, scale, cos=-0.25 if s < 7 else 0.75)
                                                for s in range(5, 9)] + [{'leaderboard/A': 0.2, 'step': 8}])
    with open(osp.join(work_dir, 'leaderboard.json'), 'w') as f:
        json.dump(board, f)


def test_scalar_logs_merge_resumed_segments_and_drop_repeated_cosines(tmp_path):
    from projects.allinone.visualization.scalar_logs import cosine_pairs, fresh_cosines, load_scalar_logs, task_names
    run = str(tmp_path / 'run')
    _fake_resumed_run(run, 1.0, {})
    with open(osp.join(run, '20260101_010000', 'vis_data', 'scalars.json'), 'a') as f:
        f.write('{"loss": 1, "st')  # killed while writing the last line
    train, val, files = load_scalar_logs(run)
    assert [r['step'] for r in train] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [r['det.grad_norm'] for r in train] == [100, 200, 300, 400, 5, 6, 7, 8]  # 5, 6 redone after the resume
    assert [(r['step'], r['leaderboard/A']) for r in val] == [(4, 0.1), (8, 0.2)]
    assert task_names(train) == ['det', 'seg'] and cosine_pairs(train) == ['cos.det-seg']
    steps, values = fresh_cosines(train, ['cos.det-seg'])
    assert steps == [1, 5, 7] and values == [[0.5, -0.25, 0.75]]  # repeats of a measurement dropped
    with pytest.raises(FileNotFoundError, match='no .*scalars.json'):
        load_scalar_logs(str(tmp_path))


def test_analyze_logs_and_compare_runs_read_every_segment_and_board(tmp_path, capsys):
    import analyze_logs
    import compare_runs
    runs = []
    for name, scale in (('vanilla', 1.0), ('tbgc', 2.0)):
        runs.append(str(tmp_path / name))
        _fake_resumed_run(runs[-1], scale, {'det/coco/bbox_mAP_50': 0.5, 'seg/mIoU': 50.0,
                                            'leaderboard/det': 0.5 * scale, 'leaderboard/seg': 0.25,
                                            'leaderboard/A': 0.4, 'leaderboard/B': 0.5 * scale})
    out = tmp_path / 'analysis'
    assert analyze_logs.main(runs + ['--out', str(out), '--keys', 'lr']) == 0
    report = json.load(open(out / 'analyze.json'))
    assert set(report['series']) == {'vanilla', 'tbgc'}
    assert report['series']['tbgc']['seg.grad_norm'] == [[s, 2.0 * 2 * (100 * s if s <= 4 else s)] for s in range(1, 9)]
    assert report['series']['vanilla']['cos.det-seg'] == [[1, 0.5], [5, -0.25], [7, 0.75]]
    assert report['series']['vanilla']['lr'] == [[s, 1e-3] for s in range(1, 9)]
    gradients = read_png(str(out / 'gradients.png'))
    assert gradients.shape[1] > gradients.shape[0] / 3  # two columns of six rows
    read_png(str(out / 'keys.png'))
    with pytest.raises(KeyError, match="--keys 'nope': not logged"):
        analyze_logs.main(runs + ['--out', str(out), '--keys', 'nope'])

    assert compare_runs.main(runs + ['--names', 'vanilla', 'tbgc', '--out', str(tmp_path / 'cmp')]) == 0
    table = capsys.readouterr().out
    assert '| run | det | seg | leaderboard A | leaderboard B |' in table
    assert '| tbgc | 1.0000 | 0.2500 | 0.4000 | 1.0000 |' in table
    # second half of the 8 merged rows (steps 5-8): det raw norms 5..8 x 2 -> 13, seg 26
    assert '| tbgc | backbone grad norm (raw) | 13 | 26 | 2.0 |' in table
    read_png(str(tmp_path / 'cmp' / 'grad_norms.png'))


@pytest.mark.slow
def test_test_tool_show_dir_and_progress_bar(trained_demo, tmp_path):
    show = tmp_path / 'show'
    proc = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'test.py'), trained_demo.config,
                           trained_demo.checkpoint, '--work-dir', str(tmp_path / 'work'), '--show-dir', str(show),
                           '--show-num', '1', '--submit', str(tmp_path / 'sub.json')],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(show)) == ['cls', 'det', 'seg']
    for task in ('cls', 'det', 'seg'):
        files = os.listdir(show / task)
        assert len(files) == 1
        read_png(str(show / task / files[0]))
    # the bar ran over every task's batches (the submission export included) and reached the end
    n_batches = sum(len(os.listdir(osp.join(trained_demo.data, d))) for d in ('dec/val', 'seg/images/val', 'cls/val'))
    assert re.search(rf'test (cls|det|seg): 100%\|.*\| {n_batches}/{n_batches}', proc.stderr), proc.stderr[-2000:]
    assert set(json.load(open(tmp_path / 'sub.json'))) == {'cls', 'dec', 'seg'}


def test_compare_methods_follows_each_training_with_a_progress_bar(tmp_path, capsys):
    import compare_methods
    child = tmp_path / 'child.py'
    child.write_text('import sys\nfor i in (50, 100, 150):\n    print(f"12/01 - mmengine - INFO - Iter(train) '
                     '[{i:4d}/150]  lr: 1e-3", flush=True)\nprint("done")\nsys.exit(3)\n')
    log = tmp_path / 'child.log'
    rc = compare_methods.run_with_progress([sys.executable, str(child)], str(log), dict(os.environ), '[m]', 150)
    assert rc == 3
    assert log.read_text().count('Iter(train)') == 3 and log.read_text().endswith('done\n')
    assert re.search(r'\[m\]: 100%\|.*\| 150/150', capsys.readouterr().out)
