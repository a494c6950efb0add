#!/usr/bin/env python
"""Data-parallel step cost: exact vs approximate mode vs one process, 2 gloo processes.

Three arms run in the same 2 processes on the demo model (half-width ResNet-18 shared by RTMDet, an
FPN seg head and a linear cls head) with one real demo batch per task (the demo's per-task batch
sizes), SumAggregator + AdamW as the demo config:

* ``exact``: ``MultiTaskDistributedDataParallel(mode='exact')``: each task's gradients all-reduced
  in buckets that start during its backward (post-accumulate-grad hooks) and are waited for at the
  next task's ``backward_task`` / at ``update_tasks``;
* ``approximate``: ``mode='approximate'``: 3 numbers per task, then the combined gradient once;
* ``one``: no wrapper, no communication: each process trains alone (the compute of one rank, under
  the same machine load as the other arms).

The arms rotate step by step (shared noise) with a barrier before each step. By default both ranks
take the same batch (rank 0's samples; ``--own-batches``: rank r takes samples r*B .. r*B+B-1), so
neither waits for a slower rank and the time blocked in collectives is communication alone. Per arm
and step, from the wrapper's counters: bytes all-reduced (checked against the sizes computed from
the parameter partition), gradient buckets launched during the backward, the time the training
thread was blocked waiting for gradient buckets; after the run, the same all-reduces of one step are
replayed alone after a barrier (the pure transfer time). ``hidden`` = 1 - blocked / alone: the share
of the gradient all-reduce time that computation covered.

    python benchmarks/bench_dist.py [--steps 10] [--out benchmarks/results/dist.json]
"""
import argparse
import json
import os.path as osp
import random
import statistics
import subprocess
import sys
import tempfile
import time

from projects.allinone.benchmarking.demo import REPO, build_demo, cpu_machine, write_result

ARMS = ('exact', 'approximate', 'one')


def expected_bytes(model, mode, world):
    """Bytes one step all-reduces, from the parameter partition (float32 parameters)."""
    part = model.parameter_partition()
    n = {g: sum(p.numel() for p in ps) for g, ps in part.items()}
    k = {g: len(ps) for g, ps in part.items()}
    tasks = [g for g in part if g != 'shared']
    presence = world * len(tasks)
    if mode == 'exact':
        return 4 * (presence + sum(n['shared'] + n[t] + k['shared'] + k[t] + 1 for t in tasks))
    return 4 * (presence + sum(n.values()) + sum(k.values())) + 8 * 3 * len(tasks)


def worker(rank, world, init_file, args, out_file):
    import numpy as np
    import torch
    import torch.distributed as dist
    from mmengine.optim import build_optim_wrapper

    from projects.allinone.engine.model_wrappers import MultiTaskDistributedDataParallel
    torch.set_num_threads(args.threads)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    arms = {}
    for arm in ARMS:
        np.random.seed(0)
        random.seed(0)
        cfg, model, batches = build_demo(args.data, 'allinone_demo.py', rank=rank if args.own_batches else 0,
                                         init_weights=True)
        ow = build_optim_wrapper(model, cfg.optim_wrapper)
        ow.stats_interval = 0  # no cosine logging pass: the steady state
        if arm == 'one':  # RTMDet turns its BN into SyncBN when a process group exists; alone it is BN
            from mmengine.model import revert_sync_batchnorm
            runner = model = revert_sync_batchnorm(model)
            ow = build_optim_wrapper(model, cfg.optim_wrapper)
            ow.stats_interval = 0
        else:
            runner = MultiTaskDistributedDataParallel(model, mode=arm)
        arms[arm] = (runner, ow, batches)
    times = {a: [] for a in ARMS}
    waits = {a: [] for a in ARMS}
    before = {}
    for i in range(args.warmup + args.steps):
        order = ARMS[i % 3:] + ARMS[:i % 3]
        for arm in order:
            runner, ow, batches = arms[arm]
            sync = getattr(runner, 'grad_sync', None)
            if i == args.warmup and sync is not None:
                before[arm] = dict(sync.counters)
            w0 = sync.counters['bucket_wait_s'] if sync is not None else 0.0
            dist.barrier()
            t0 = time.perf_counter()
            runner.train()
            runner.train_step(batches, ow)
            if i >= args.warmup:
                times[arm].append(time.perf_counter() - t0)
                waits[arm].append((sync.counters['bucket_wait_s'] - w0) if sync is not None else 0.0)
    replay = {}
    for arm in ('exact', 'approximate'):
        sizes = [(n, dt) for n, dt, kind in arms[arm][0].grad_sync.step_allreduces if kind == 'bucket']
        tensors = [torch.ones(n, dtype=dt) for n, dt in sizes]
        runs = []
        for _ in range(5):
            dist.barrier()
            t0 = time.perf_counter()
            for t in tensors:
                dist.all_reduce(t)
            runs.append(time.perf_counter() - t0)
        replay[arm] = statistics.median(runs)
    if rank == 0:
        res = {}
        for arm in ARMS:
            r = dict(median_step_s=statistics.median(times[arm]))
            if arm != 'one':
                ddp = arms[arm][0]
                after = ddp.grad_sync.counters
                per = {k: (after[k] - before[arm][k]) / args.steps for k in after}
                wait = statistics.median(waits[arm])
                r.update(allreduce_bytes_per_step=per['allreduce_bytes'],
                         allreduce_calls_per_step=per['allreduce_calls'],
                         buckets_launched_in_backward_per_step=per['allreduce_launched_in_backward'],
                         expected_allreduce_bytes_per_step=expected_bytes(ddp.module, arm, world),
                         broadcast_bytes_per_step=per['broadcast_bytes'],
                         median_bucket_wait_s=wait, bucket_allreduces_alone_s=replay[arm],
                         hidden_share=max(0.0, 1.0 - wait / replay[arm]) if replay[arm] > 0 else None)
            res[arm] = r
        ratios = [e / a for e, a in zip(times['exact'], times['approximate'])]
        res['exact_over_approximate_median_ratio'] = statistics.median(ratios)
        res['exact_over_one_median_ratio'] = statistics.median([e / o for e, o in zip(times['exact'], times['one'])])
        model = arms['exact'][0].module
        part = model.parameter_partition()
        res['params'] = {g: sum(p.numel() for p in ps) for g, ps in part.items()}
        res['batch_per_rank'] = {t: len(b['inputs']) for t, b in arms['exact'][2].items()}
        res['same_batch_on_every_rank'] = not args.own_batches
        with open(out_file, 'w') as f:
            json.dump(res, f)
    dist.barrier()
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=osp.join(REPO, 'data', 'demo'))
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--threads', type=int, default=1, help='torch threads per process')
    p.add_argument('--own-batches', action='store_true',
                   help="each rank its own samples (the ranks' step times then differ, and the faster waits)")
    p.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'results', 'dist.json'))
    args = p.parse_args()
    if not osp.exists(osp.join(args.data, 'meta.json')):
        subprocess.check_call([sys.executable, osp.join(REPO, 'tools', 'make_demo_data.py'), '--out', args.data])
    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory() as tmp:
        out_file = osp.join(tmp, 'res.json')
        mp.spawn(worker, args=(2, osp.join(tmp, 'init'), args, out_file), nprocs=2, join=True)
        with open(out_file) as f:
            res = json.load(f)
    import torch
    res['machine'] = cpu_machine(processes=2, threads_per_process=args.threads, backend='gloo',
                                 torch=torch.__version__)
    res['steps'] = args.steps
    write_result(res, args.out)
    mb = 2 ** 20
    print(f"parameters: shared {res['params']['shared'] * 4 / mb:.1f} MB, "
          + ', '.join(f"{t} {n * 4 / mb:.1f} MB" for t, n in res['params'].items() if t != 'shared')
          + f"; batch per rank {res['batch_per_rank']}")
    print('| arm | median step (s) | all-reduced / step (MB) | expected (MB) | all-reduce calls / step '
          '| buckets started in the backward / step | blocked on buckets (s) | bucket all-reduces alone (s) '
          '| hidden |')
    print('|---|---|---|---|---|---|---|---|---|')
    for arm in ARMS:
        r = res[arm]
        if arm == 'one':
            print(f"| one process | {r['median_step_s']:.3f} | 0 | 0 | 0 | - | - | - | - |")
            continue
        print(f"| {arm} | {r['median_step_s']:.3f} | {r['allreduce_bytes_per_step'] / mb:.2f} "
              f"| {r['expected_allreduce_bytes_per_step'] / mb:.2f} | {r['allreduce_calls_per_step']:.0f} "
              f"| {r['buckets_launched_in_backward_per_step']:.0f} | {r['median_bucket_wait_s']:.3f} "
              f"| {r['bucket_allreduces_alone_s']:.3f} | {100 * r['hidden_share']:.0f}% |")
    print(f"exact / approximate step (median of per-step ratios): {res['exact_over_approximate_median_ratio']:.3f}; "
          f"exact / one process: {res['exact_over_one_median_ratio']:.3f}")


if __name__ == '__main__':
    main()
