#!/usr/bin/env python
"""Step time of mixed precision (``--amp``) against fp32 with the per-task gradient wrapper.

Arms, on the demo model with one real demo batch per task (det 8, seg 8, cls 16), TBGC at 0.1 (per-task
clipping on unscaled gradients) and AdamW, exactly what ``tools/train.py --amp`` selects on this
machine (``projects.allinone.utils.cli.enable_amp``):

  fp32  ``MultiTaskOptimWrapper``
  amp   ``MultiTaskAmpOptimWrapper``: fp16 autocast + dynamic loss scaling on a GPU, bf16 autocast
        without loss scaling on CPU

The arms alternate step by step in one process (shared noise); reported: the median step time of
each and the median of the per-step ratios amp / fp32.

    python benchmarks/bench_amp.py [--steps 20] [--out benchmarks/results/amp.json]
"""
import argparse
import copy
import os.path as osp
import statistics
import subprocess
import sys
import time

from projects.allinone.benchmarking.demo import REPO, build_demo, cpu_machine, write_result

ARMS = ('fp32', 'amp')


def build(data_root, device):
    cfg, model, batches = build_demo(data_root, 'allinone_demo_tbgc.py', init_weights=True)
    return cfg, model.to(device), batches


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=osp.join(REPO, 'data', 'demo'))
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--threads', type=int, default=1,
                   help='torch threads (1: on a shared machine OpenMP threads waiting on a busy core stall)')
    p.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'results', 'amp.json'))
    args = p.parse_args()
    if not osp.exists(osp.join(args.data, 'meta.json')):
        subprocess.check_call([sys.executable, osp.join(REPO, 'tools', 'make_demo_data.py'), '--out', args.data])
    import torch
    from mmengine.optim import build_optim_wrapper

    from projects.allinone.utils.cli import enable_amp
    torch.set_num_threads(args.threads)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    cfg, model, batches = build(args.data, device)
    models, wrappers, settings = {}, {}, {}
    for arm in ARMS:
        c = copy.deepcopy(cfg)
        if arm == 'amp':
            enable_amp(c)
        models[arm] = copy.deepcopy(model)
        wrappers[arm] = build_optim_wrapper(models[arm], c.optim_wrapper)
        wrappers[arm].stats_interval = 0
        settings[arm] = {k: c.optim_wrapper.get(k) for k in ('type', 'dtype', 'loss_scale')}
    times = {arm: [] for arm in ARMS}
    for i in range(args.warmup + args.steps):
        for arm in (ARMS if i % 2 == 0 else ARMS[::-1]):
            models[arm].train()
            if device == 'cuda':
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            models[arm].train_step(batches, wrappers[arm])
            if device == 'cuda':
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[arm].append(time.perf_counter() - t0)
    ratios = [a / f for a, f in zip(times['amp'], times['fp32'])]
    res = dict(device=device, settings=settings,
               speed={arm: dict(median_s=statistics.median(times[arm])) for arm in ARMS},
               amp_over_fp32=statistics.median(ratios),
               last_stats={arm: wrappers[arm].last_stats for arm in ARMS},
               batch={t: len(b['inputs']) for t, b in batches.items()}, steps=args.steps)
    if device == 'cuda':
        res['machine'] = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__)
    else:
        res['machine'] = cpu_machine(threads=args.threads, torch=torch.__version__)
    write_result(res, args.out)
    print(f"device {device}; amp = {settings['amp']}")
    print('| arm | median step (s) | step time / fp32 |')
    print('|---|---|---|')
    for arm in ARMS:
        ratio = 1.0 if arm == 'fp32' else res['amp_over_fp32']
        print(f"| {arm} | {res['speed'][arm]['median_s']:.3f} | {ratio:.3f} |")


if __name__ == '__main__':
    main()
