"""Data-loading cost of the multi-branch augmentation: images/s of each task's training loader with
and without its mixing branch (Mosaic / MixUp / RandomMosaic), at the challenge's image sizes.

    python benchmarks/bench_aug_loading.py [--config configs/allinone.py] [--num-workers 2] [--images 64]
                                           [--repeats 3] [--out benchmarks/results/aug_loading.json]

Writes a synthetic tree in the challenge layout at the real image sizes (detection 2048 x 2048,
segmentation 1280 x 720, classification 640 x 480; random shapes with boxes and label maps) into a
temporary folder, then builds each task's training loader from the config, pointed at that tree,
and times it in three arms whose only difference is the weight of the task's mixing branch:

- ``config``: the branch weights as configured (e.g. detection hard 0.8 / easy 0.2);
- ``no_mix``: the mixing branch off (its weight 0): the same pipeline without it;
- ``mix_only``: every sample through the mixing branch.

A task without a mixing branch (classification) is timed in the ``config`` arm only. The arms are
interleaved ``--repeats`` times; each measurement starts fresh workers, draws one batch to warm up,
then times ``--images`` images; the figure is the median images/s and its ratio to ``no_mix``.
"""
import argparse
import copy
import json
import os
import os.path as osp
import statistics
import tempfile
import time

import cv2
import numpy as np

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def make_track1_tree(root: str, n: int = 16, det_size=(2048, 2048), seg_size=(1280, 720), cls_size=(640, 480),
                     det_classes=None, seed: int = 0) -> str:
    """``n`` training images per task in the challenge's layout under ``root`` (sizes are (w, h)).

    Detection: random rectangles and discs, 1-6 of them labelled boxes of the given classes (COCO
    json, ids 1..C). Segmentation: label maps of horizontal bands and blocks with values 0..18, the
    image their colours plus noise. Classification: noise images, ``name label`` lines."""
    rng = np.random.RandomState(seed)
    det_classes = list(det_classes or [f'c{i}' for i in range(45)])
    for sub in ('dec/train', 'seg/images/train', 'seg/label/train', 'cls/train'):
        os.makedirs(osp.join(root, sub), exist_ok=True)
    images, anns = [], []
    w, h = det_size
    for i in range(n):
        img = (rng.rand(h // 16, w // 16, 3) * 255).astype(np.uint8)
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        for _ in range(int(rng.randint(1, 7))):
            bw, bh = (int(v) for v in rng.randint(12, max(13, w // 8), 2))
            x0, y0 = int(rng.randint(0, w - bw)), int(rng.randint(0, h - bh))
            cv2.rectangle(img, (x0, y0), (x0 + bw, y0 + bh), tuple(int(c) for c in rng.randint(0, 255, 3)), -1)
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=int(rng.randint(len(det_classes))) + 1,
                             bbox=[x0, y0, bw, bh], area=bw * bh, iscrowd=0))
        name = f'{i:05d}.jpg'
        cv2.imwrite(osp.join(root, 'dec/train', name), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append(dict(id=i + 1, file_name=name, width=w, height=h))
    with open(osp.join(root, 'dec/train.json'), 'w') as f:
        json.dump(dict(images=images, annotations=anns,
                       categories=[dict(id=k + 1, name=c) for k, c in enumerate(det_classes)]), f)
    w, h = seg_size
    palette = rng.randint(0, 255, (19, 3))
    for i in range(n):
        label = np.zeros((h, w), np.uint8)
        for y in range(0, h, h // 6):
            label[y:] = rng.randint(19)
        for _ in range(6):
            x0, y0 = int(rng.randint(0, w - 40)), int(rng.randint(0, h - 40))
            label[y0:y0 + int(rng.randint(20, h // 3)), x0:x0 + int(rng.randint(20, w // 4))] = rng.randint(19)
        img = np.clip(palette[label] + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(osp.join(root, 'seg/images/train', f'{i:05d}.jpg'), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        cv2.imwrite(osp.join(root, 'seg/label/train', f'{i:05d}.png'), label)
    w, h = cls_size
    lines = []
    for i in range(n):
        img = cv2.resize((rng.rand(h // 8, w // 8, 3) * 255).astype(np.uint8), (w, h))
        cv2.imwrite(osp.join(root, 'cls/train', f'{i:05d}.jpg'), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        lines.append(f'{i:05d}.jpg {i % 196}\n')
    with open(osp.join(root, 'cls/train.txt'), 'w') as f:
        f.writelines(lines)
    return root


def mixing_branches(loader_cfg: dict):
    """``(MultiBranchAugment config, name of its mixing branch)`` of a loader config's pipeline, or None."""
    from mmengine.registry import TRANSFORMS
    for t in loader_cfg['dataset']['pipeline']:
        if t.get('type') != 'MultiBranchAugment':
            continue
        scope = loader_cfg['dataset'].get('_scope_')
        from mmengine.registry import DefaultScope
        with DefaultScope.overwrite_default_scope(scope):
            built = TRANSFORMS.build(copy.deepcopy(t))
        for name, mixers in zip(built.names, built.mixers):
            if mixers:
                return t, name
    return None


def arm_config(loader_cfg: dict, arm: str) -> dict:
    cfg = copy.deepcopy(loader_cfg)
    found = mixing_branches(cfg)
    if arm == 'config' or found is None:
        return cfg
    aug, mix = found
    names = aug['names']
    aug['probs'] = [(1.0 if n == mix else 0.0) if arm == 'mix_only' else (0.0 if n == mix else p)
                    for n, p in zip(names, aug['probs'])]
    aug.pop('schedule', None)
    return cfg


def images_per_second(loader_cfg: dict, images: int, workers: int, seed: int) -> float:
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    cfg = copy.deepcopy(loader_cfg)
    cfg.update(num_workers=workers, persistent_workers=False)
    with DefaultScope.overwrite_default_scope(cfg['dataset'].get('_scope_', 'mmdet')):
        loader = Runner.build_dataloader(cfg, seed=seed)
        it = iter(loader)
        next(it)  # workers started, first batch out
        n, t0 = 0, time.perf_counter()
        while n < images:
            try:
                batch = next(it)
            except StopIteration:
                it = iter(loader)
                batch = next(it)
            n += len(batch['data_samples'])
        dt = time.perf_counter() - t0
        del it
    return n / dt


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default=osp.join(REPO, 'configs', 'allinone.py'))
    p.add_argument('--num-workers', type=int, default=2)
    p.add_argument('--images', type=int, default=64, help='images timed per measurement')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--tree-images', type=int, default=24, help='images per task in the synthetic tree')
    p.add_argument('--tasks', nargs='+', default=None)
    p.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'results', 'aug_loading.json'))
    args = p.parse_args(argv)

    import cv2 as _cv2
    _cv2.setNumThreads(1)
    from mmengine.config import Config

    import projects.allinone  # noqa: F401  (registries)
    cfg = Config.fromfile(args.config)
    root = tempfile.mkdtemp(prefix='track1_bench_')
    det_classes = cfg.train_dataloader['det']['dataset']['metainfo']['classes']
    t0 = time.perf_counter()
    make_track1_tree(root, n=args.tree_images, det_classes=det_classes)
    print(f'synthetic tree of {args.tree_images} images per task in {root} ({time.perf_counter() - t0:.0f} s)')
    loaders = {}
    for task, loader in cfg.train_dataloader.items():
        if loader is None or (args.tasks and task not in args.tasks):
            continue
        loader = copy.deepcopy(loader.to_dict() if hasattr(loader, 'to_dict') else loader)
        loader['dataset']['data_root'] = osp.join(root, {'det': 'dec'}.get(task, task)) + '/'
        loaders[task] = loader

    results = {t: {} for t in loaders}
    for rep in range(args.repeats):
        for task, loader in loaders.items():
            arms = ['config', 'no_mix', 'mix_only'] if mixing_branches(loader) else ['config']
            for arm in arms:
                ips = images_per_second(arm_config(loader, arm), args.images, args.num_workers, seed=rep)
                results[task].setdefault(arm, []).append(ips)
                print(f'repeat {rep}: {task:3s} {arm:8s} {ips:6.2f} images/s', flush=True)

    summary = {}
    for task, arms in results.items():
        med = {arm: statistics.median(v) for arm, v in arms.items()}
        base = med.get('no_mix', med['config'])
        summary[task] = {arm: dict(images_per_s=round(m, 2), vs_no_mix=round(m / base, 3),
                                   runs=[round(x, 2) for x in arms[arm]])
                         for arm, m in med.items()}
    print('\n| task | arm | images/s (median) | / no_mix |\n| --- | --- | --- | --- |')
    for task, arms in summary.items():
        for arm, r in arms.items():
            print(f"| {task} | {arm} | {r['images_per_s']:.2f} | {r['vs_no_mix']:.2f} |")
    from projects.allinone.benchmarking.demo import cpu_machine, write_result
    write_result(dict(config=osp.relpath(args.config, REPO), images=args.images, repeats=args.repeats,
                      machine=cpu_machine(num_workers=args.num_workers), summary=summary), args.out)
    print(f'written {args.out}')


if __name__ == '__main__':
    main()
