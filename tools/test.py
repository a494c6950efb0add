#!/usr/bin/env python
"""Evaluate an AllInOne checkpoint on every task and print the leaderboard table.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--data-root DIR] [--submit OUT.json]
        [--images TASK=DIR ...] [--image-list TASK=FILE ...] [--tta] [--show-dir DIR [--show-num N]]
        [--cfg-options k=v ...]

With ``--images`` a task predicts on an unlabeled image folder (the challenge's test split) instead
of its labeled test set: nothing is scored for it, its predictions go to the ``--submit`` file.
"""
import argparse
import os.path as osp
import sys

from projects.allinone.utils.cli import add_common_args, finish_distributed, load_config, setup_distributed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test an AllInOne multi-task model')
    parser = add_common_args(parser)
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--submit', metavar='OUT.json',
                        help='also write the challenge submission file (cls / dec / seg)')
    parser.add_argument('--images', nargs='+', default=[], metavar='TASK=DIR',
                        help='predict TASK on the unlabeled images of DIR (format only: no labels read, '
                        "not scored; use with --submit); TASK is the config's task name (det) or its key in "
                        'the submission file (dec)')
    parser.add_argument('--image-list', nargs='+', default=[], metavar='TASK=FILE',
                        help="order/subset of TASK's --images: a text list (one name per line) or a COCO "
                        'json with "images" (its ids become the detection image_id)')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation: each task's tta_pipeline views merged by its library's TTA "
                        'model (config keys tta_model, tta_pipeline); scores and --submit use the merged result')
    parser.add_argument('--show-dir', metavar='DIR', help='pictures of the predictions beside the ground truth, '
                        "DIR/<task>/<image>.png, each task drawn by its library's visualiser")
    parser.add_argument('--show-num', type=int, default=20, metavar='N',
                        help='at most N pictures per task (default 20)')
    return parser.parse_args(argv)


def _task_paths(items, option):
    """``['det=dir', ...]`` -> ``{'det': '/abs/dir'}`` (absolute before the tools chdir)."""
    out = {}
    for item in items:
        task, sep, path = item.partition('=')
        if not sep or not task or not path:
            raise ValueError(f'{option} expects TASK=PATH, got {item!r}')
        out[task] = osp.abspath(path)
    return out


def _by_task(cfg, paths, option):
    """Keys given as the config's task names or the challenge file's keys (``dec``) -> task names."""
    from projects.allinone.utils.unlabeled import resolve_task
    out = {}
    for name, path in paths.items():
        task = resolve_task(cfg, name, option)
        if task in out:
            raise ValueError(f'{option}: task {task!r} given twice ({name}= and another name for it)')
        out[task] = path
    return out


def main(argv=None):
    args = parse_args(argv)
    checkpoint = osp.abspath(args.checkpoint)
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    submit = osp.abspath(args.submit) if args.submit else None
    show_dir = osp.abspath(args.show_dir) if args.show_dir else None
    images, lists = _task_paths(args.images, '--images'), _task_paths(args.image_list, '--image-list')
    cfg = load_config(args)

    from mmengine.runner import Runner

    import projects.allinone  # noqa: F401
    from projects.allinone.utils import check_data, use_unlabeled_images

    images, lists = _by_task(cfg, images, '--images'), _by_task(cfg, lists, '--image-list')
    stray = set(lists) - set(images)
    if stray:
        raise ValueError(f'--image-list names task(s) {sorted(stray)} without --images')
    if args.tta:
        from projects.allinone.engine.tta import use_tta
        print(f'test-time augmentation for task(s) {use_tta(cfg)}', file=sys.stderr)
    for task, folder in images.items():
        use_unlabeled_images(cfg, task, folder, lists.get(task))
    if images and not submit:
        print('note: --images without --submit predicts without writing anything', file=sys.stderr)
    setup_distributed(cfg)  # --launcher pytorch (tools/dist_test.sh): gloo on CPU, nccl on GPU
    check_data(cfg, 'test')
    cfg.load_from = checkpoint
    if args.submit:
        cfg.test_cfg.setdefault('submission', {})
        cfg.test_cfg.submission.out = submit
    # a progress bar over every task's batches (the test and the submission export); --show-dir pictures
    hooks = [dict(type='ProgressBarHook')]
    if show_dir:
        hooks.append(dict(type='MultiTaskVisualizationHook', draw=True, test_out_dir=show_dir,
                          max_per_task=args.show_num))
    cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + hooks
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    del runner
    finish_distributed()  # a clean exit of every rank: no thread or process group left running
    return metrics


if __name__ == '__main__':
    main()
