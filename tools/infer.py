#!/usr/bin/env python
"""Run a trained AllInOne model on your own images: a picture per image and one JSON of predictions.

    python tools/infer.py IMAGES [IMAGES ...] CONFIG CHECKPOINT [--tasks det seg cls] [--out-dir DIR]
        [--score-thr 0.3] [--device cpu|cuda] [--batch-size 1] [--no-vis] [--min-size 320]

IMAGES: image files and/or folders (their image files, sorted). Every chosen task (default: all the
checkpoint has) runs on every image as ``tools/test.py`` would run it (``AllInOneInferencer``).
Writes ``DIR/vis/<image>.png`` (a panel per task, drawn by mmdet / mmseg / mmpretrain's
visualisers; boxes above ``--score-thr``) and ``DIR/predictions.json`` (every prediction, as
``AllInOneInferencer`` returns it; label maps as PNGs in ``DIR/preds/``). An image that cannot be
read is named and skipped, the others are processed, and the exit status is 1.
"""
import argparse
import os.path as osp
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('paths', nargs='+', metavar='IMAGES CONFIG CHECKPOINT',
                   help='image files or folders, then the config, then the checkpoint')
    p.add_argument('--tasks', nargs='+', help='tasks to run (default: every task the checkpoint has)')
    p.add_argument('--out-dir', default='work_dirs/infer', help='where the pictures and predictions.json go')
    p.add_argument('--score-thr', type=float, default=0.3, help='detection boxes drawn above this score')
    p.add_argument('--device', default=None, help="'cpu', 'cuda', 'cuda:1'... (default: what is available)")
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--no-vis', action='store_true', help='predictions only, no pictures')
    p.add_argument('--min-size', type=int, default=320, help='draw smaller images enlarged to this short side')
    args = p.parse_args(argv)
    if len(args.paths) < 3:
        p.error('expected IMAGES [IMAGES ...] CONFIG CHECKPOINT')
    args.images, args.config, args.checkpoint = args.paths[:-2], args.paths[-2], args.paths[-1]
    if not args.config.endswith('.py'):
        p.error(f'the second-to-last argument should be the config (.py), got {args.config!r}')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    for path in (args.config, args.checkpoint):
        if not osp.isfile(path):
            raise SystemExit(f'error: not found: {path}')
    import projects.allinone  # noqa: F401
    from projects.allinone.apis import AllInOneInferencer, list_images
    inputs = []
    for path in args.images:  # a missing file is reported with the unreadable images
        try:
            inputs += list_images(path) if osp.isdir(path) else [path]
        except FileNotFoundError as e:
            raise SystemExit(f'error: {e}')
    try:
        inferencer = AllInOneInferencer(args.config, args.checkpoint, device=args.device, tasks=args.tasks,
                                        min_size=args.min_size)
    except KeyError as e:  # an unknown task, or one the checkpoint has no weights for
        raise SystemExit(f'error: {e.args[0]}')
    results = inferencer(inputs, batch_size=args.batch_size, out_dir=args.out_dir, pred_score_thr=args.score_thr,
                         no_save_vis=args.no_vis)
    vis = '' if args.no_vis else f", {osp.join(args.out_dir, 'vis')}/"
    written = osp.join(args.out_dir, 'predictions.json') + vis
    print(f"{len(results['predictions'])} image(s), tasks {', '.join(inferencer.tasks)}: {written}")
    for err in results['errors']:
        print(f"error: {err['error']}", file=sys.stderr)
    if results['errors']:
        print(f"{len(results['errors'])} of {len(inputs)} image(s) could not be read", file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
