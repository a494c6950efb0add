#!/usr/bin/env python
"""Step time and memory of the per-task gradient wrapper (TBGC, Sum) against the joint step.

Arms, all on the same model (the demo's) and the same real demo batches:
  joint     mmengine ``OptimWrapper``: one backward of the summed loss, global clip 0.1
  sum       ``MultiTaskOptimWrapper`` + ``SumAggregator`` (per-task backward passes) + global clip 0.1:
            the method called ``vanilla`` elsewhere
  tbgc      ``MultiTaskOptimWrapper`` + ``TBGCAggregator(max_norm=0.1)`` (streaming)
  tbgc_mat  the same through the matrix path (holds all T task gradients), for reference

Speed: the arms are interleaved step by step in one process (shared noise), and the median of the
per-step ratios to the joint step is reported. Memory: each arm runs alone in a fresh process; after two
warm-up steps (optimizer state allocated) one step runs under torch's profiler and the peak of its
memory timeline (all live CPU tensors: parameters, optimizer state, activations, gradients,
buffers) is reported. Process RSS is useless here: its peak is set while importing the libraries.

    python benchmarks/bench_tbgc.py [--steps 20] [--out benchmarks/results/tbgc.json]
"""
import argparse
import copy
import json
import os.path as osp
import subprocess
import sys

from projects.allinone.benchmarking.demo import REPO, build, cpu_machine, peak_step_memory_mb, write_result
from projects.allinone.benchmarking.method_cost import interleaved_speed, peak_mb_in_fresh_process

ARMS = ('joint', 'sum', 'tbgc', 'tbgc_mat')


def make_wrapper(arm, model):
    import torch
    from mmengine.optim import OptimWrapper

    from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if arm == 'joint':
        return OptimWrapper(opt, clip_grad=dict(max_norm=0.1))
    if arm == 'sum':
        return MultiTaskOptimWrapper(opt, aggregator=dict(type='SumAggregator'), clip_grad=dict(max_norm=0.1),
                                     stats_interval=0)
    return MultiTaskOptimWrapper(opt, aggregator=dict(type='TBGCAggregator', max_norm=0.1),
                                 streaming=(arm == 'tbgc'), stats_interval=0)


def run_speed(args):
    import torch
    torch.set_num_threads(args.threads)
    model, batch = build(args.data)
    models = {arm: copy.deepcopy(model) for arm in ARMS}
    wrappers = {arm: make_wrapper(arm, models[arm]) for arm in ARMS}
    out = interleaved_speed(models, wrappers, batch, args.steps, args.warmup, baseline='joint')
    shared = sum(p.numel() * p.element_size() for _, p in model.shared_parameters())
    return dict(speed=out, shared_param_mb=shared / 2**20)


def run_memory_arm(args):
    import torch
    torch.set_num_threads(args.threads)
    model, batch = build(args.data)
    print(json.dumps(dict(peak_mb=peak_step_memory_mb(model, make_wrapper(args.arm, model), batch))))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=osp.join(REPO, 'data', 'demo'))
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'results', 'tbgc.json'))
    p.add_argument('--arm', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.arm:
        return run_memory_arm(args)
    if not osp.exists(osp.join(args.data, 'meta.json')):
        subprocess.check_call([sys.executable, osp.join(REPO, 'tools', 'make_demo_data.py'), '--out', args.data])
    res = run_speed(args)
    mem = {}
    for arm in ARMS:
        mem[arm] = peak_mb_in_fresh_process([sys.executable, __file__, '--arm', arm, '--data', args.data,
                                             '--threads', str(args.threads)])
    res['peak_tensor_mb'] = mem
    res['extra_over_joint_mb'] = {a: mem[a] - mem['joint'] for a in ARMS}
    res['machine'] = cpu_machine(threads=args.threads)
    res['steps'] = args.steps
    write_result(res, args.out)
    print(f"shared (backbone) parameters: {res['shared_param_mb']:.1f} MB")
    print("| arm | median step (s) | step time / joint | peak tensor memory (MB) | extra over joint (MB) |")
    print('|---|---|---|---|---|')
    for arm in ARMS:
        s = res['speed'][arm]
        print(f"| {arm} | {s['median_s']:.3f} | {s['ratio_to_joint']:.3f} | {mem[arm]:.1f} | "
              f"{res['extra_over_joint_mb'][arm]:+.1f} |")


if __name__ == '__main__':
    main()
