#!/usr/bin/env python
"""Look at what the training pipeline makes of each task's samples, and which augmentation branch each took.

    python tools/browse_dataset.py CONFIG [--task det seg cls] [--num 16] [--out-dir DIR] [--cols 4]
        [--shuffle] [--seed 0] [--cell 240] [--cfg-options k=v ...]

For each task (default: every task of ``train_dataloader``) the first ``--num`` samples (``--shuffle``:
random ones) go through the task's training pipeline as training would see them; each is drawn with
its labels (boxes, label map or class) by the task's library visualiser and captioned with the
``MultiBranchAugment`` branch it took (read from the sample: the pack transform is given the
``aug_branch`` meta key; ``-`` when the pipeline has no branches). Writes
``DIR/browse_<task>.png`` (pages of ``--per-page`` samples: ``browse_<task>_<page>.png`` when there are
several) and ``DIR/browse_<task>.json`` (index, image, branch, size and labels of each sample), and
prints how often each branch was taken.
"""
import argparse
import copy
import inspect
import json
import os
import os.path as osp
import random
import sys
from collections import Counter, OrderedDict

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

BRANCH_KEY = 'aug_branch'


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('--task', nargs='+', help='tasks to browse (default: all)')
    p.add_argument('--num', type=int, default=16, help='samples per task')
    p.add_argument('--out-dir', default=osp.join('work_dirs', 'browse_dataset'))
    p.add_argument('--cols', type=int, default=4, help='samples per row of a page')
    p.add_argument('--per-page', type=int, default=16, help='samples per page')
    p.add_argument('--shuffle', action='store_true', help='random samples instead of the first ones')
    p.add_argument('--seed', type=int, default=0, help='seed of the augmentations (and of --shuffle)')
    p.add_argument('--cell', type=int, default=240, help='height of a sample on the page (pixels)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys')
    args = p.parse_args(argv)
    if args.num < 1 or args.cols < 1 or args.per_page < 1:
        p.error('--num, --cols and --per-page must be >= 1')
    return args


def with_branch_meta(pipeline, scope):
    """The pipeline with ``aug_branch`` added to its pack transform's meta keys (so the sample carries it)."""
    from mmengine.registry import TRANSFORMS
    out = []
    for step in pipeline:
        step = copy.deepcopy(dict(step))
        if str(step.get('type', '')).startswith('Pack'):
            keys = step.get('meta_keys')
            if keys is None:
                with TRANSFORMS.switch_scope_and_registry(scope) as registry:
                    cls = registry.get(step['type'])
                param = inspect.signature(cls.__init__).parameters.get('meta_keys') if cls else None
                if param is None or param.default is inspect.Parameter.empty:
                    raise ValueError(f"{step['type']}: cannot add the {BRANCH_KEY!r} meta key (no meta_keys argument)")
                keys = param.default
            if BRANCH_KEY not in keys:
                step['meta_keys'] = tuple(keys) + (BRANCH_KEY, )
        out.append(step)
    return out


def to_rgb(inputs):
    """A packed image tensor (C x H x W, BGR as the loaders read it) as an H x W x 3 RGB array."""
    import numpy as np
    img = inputs.detach().cpu().numpy()
    img = np.transpose(img, (1, 2, 0)) if img.ndim == 3 else img
    if img.ndim == 2 or img.shape[2] == 1:
        img = np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img[..., ::-1])


def describe(sample, classes):
    """The labels a sample carries, for the JSON."""
    import numpy as np
    name = (lambda i: classes[i] if classes and 0 <= i < len(classes) else str(i))  # noqa: E731
    if 'gt_instances' in sample:
        labels = sample.gt_instances.labels.tolist()
        return dict(boxes=len(labels), labels=[name(i) for i in labels])
    if 'gt_sem_seg' in sample:
        ids = np.unique(sample.gt_sem_seg.data.cpu().numpy()).tolist()
        return dict(classes=[name(i) if i != 255 else 'ignore' for i in ids])
    if 'gt_label' in sample:
        return dict(label=[name(int(i)) for i in sample.gt_label.tolist()])
    return {}


def page(panels, cols, cell):
    """Captioned panels in rows of ``cols``, each scaled to ``cell`` pixels high."""
    import mmcv
    import numpy as np

    from projects.allinone.visualization.visualizer import compose_panels
    rows = []
    for r in range(0, len(panels), cols):
        scaled = [(c, mmcv.imresize(img, (max(1, round(img.shape[1] * cell / img.shape[0])), cell)))
                  for c, img in panels[r:r + cols]]
        rows.append(compose_panels(scaled))
    width = max(r.shape[1] for r in rows)
    gap = np.full((6, width, 3), 255, np.uint8)
    out = []
    for r in rows:
        out += [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255), gap]
    return np.concatenate(out[:-1], axis=0)


def main(argv=None):
    args = parse_args(argv)
    config = osp.abspath(args.config)
    if not osp.isfile(config):
        raise SystemExit(f'error: config file not found: {config}')
    out_dir = osp.abspath(args.out_dir)
    os.chdir(REPO)  # relative data paths in configs are relative to the repository root

    import mmcv
    import numpy as np
    import torch
    from mmengine.config import Config
    from mmengine.registry import DATASETS, init_default_scope

    import projects.allinone  # noqa: F401
    from projects.allinone.visualization.visualizer import MultiTaskVisualizer, safe_name
    cfg = Config.fromfile(config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    default_scope = cfg.get('default_scope', 'mmdet')
    init_default_scope(default_scope)
    loaders = {t: v for t, v in (cfg.get('train_dataloader') or {}).items() if v is not None}
    if not loaders or 'dataset' in loaders:
        raise SystemExit('error: train_dataloader must be {task: loader config}')
    tasks = args.task or list(loaders)
    unknown = [t for t in tasks if t not in loaders]
    if unknown:
        raise SystemExit(f'error: task(s) {unknown} not in train_dataloader (tasks: {list(loaders)})')
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    os.makedirs(out_dir, exist_ok=True)
    drawer = MultiTaskVisualizer(name='browse_dataset', min_size=args.cell)
    for task in tasks:
        ds_cfg = copy.deepcopy(loaders[task]['dataset'])
        ds_cfg['pipeline'] = with_branch_meta(ds_cfg.get('pipeline', []), ds_cfg.get('_scope_', default_scope))
        try:
            dataset = DATASETS.build(ds_cfg)
        except Exception as e:
            where = ', '.join(f'{k}={ds_cfg[k]}' for k in ('data_root', 'ann_file') if ds_cfg.get(k))
            raise SystemExit(f'error: train_dataloader.{task}: could not build the dataset ({where}): '
                             f'{type(e).__name__}: {e}')
        if len(dataset) == 0:
            raise SystemExit(f'error: train_dataloader.{task}: the dataset is empty')
        drawer.set_task_meta(task, dataset.metainfo)
        classes = list(dataset.metainfo.get('classes') or [])
        order = list(range(len(dataset)))
        if args.shuffle:
            random.Random(args.seed).shuffle(order)
        panels, records, branches = [], [], Counter()
        for idx in order[:args.num]:
            item = dataset[idx]
            sample = item['data_samples']
            img = to_rgb(item['inputs'])
            branch = sample.metainfo.get(BRANCH_KEY)
            branch = '-' if branch is None else str(branch)
            branches[branch] += 1
            img_path = sample.metainfo.get('img_path') or ''
            drawn = drawer.draw_task(task, img, sample, draw_gt=True, draw_pred=False)
            h, w = img.shape[:2]
            panels.append((f'{osp.basename(img_path)} | {branch} | {w}x{h}', drawn))
            records.append(OrderedDict(index=idx, img_path=img_path, branch=branch, width=w, height=h,
                                       **describe(sample, classes)))
        pages = [panels[i:i + args.per_page] for i in range(0, len(panels), args.per_page)]
        written = []
        for n, chunk in enumerate(pages):
            name = f'browse_{safe_name(task)}' + (f'_{n}' if len(pages) > 1 else '') + '.png'
            written.append(osp.join(out_dir, name))
            mmcv.imwrite(mmcv.rgb2bgr(page(chunk, args.cols, args.cell)), written[-1])
        with open(osp.join(out_dir, f'browse_{safe_name(task)}.json'), 'w') as f:
            json.dump(dict(task=task, seed=args.seed, branches=dict(branches), samples=records), f, indent=1)
        counts = ', '.join(f'{b} {n}' for b, n in sorted(branches.items()))
        print(f'{task}: {len(records)} samples, branches: {counts} -> {", ".join(written)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
