#!/usr/bin/env python
"""Communication cost of the data-parallel wrapper: exact vs approximate mode, 2 gloo processes.

Both modes run in the same 2 processes on the demo model (half-width ResNet-18 shared by RTMDet, an
FPN seg head and a linear cls head) with one real demo batch per task and rank (rank r takes the
dataset's samples r*B .. r*B+B-1; B = the demo's per-task batch sizes), SumAggregator + AdamW as
the demo config. The two arms alternate step by step (shared noise); per arm and step:

* bytes all-reduced, from the wrapper's counters (the flat buckets it sends), checked against the
  sizes computed from the parameter partition: exact = T presence flags + for every task
  (shared + own parameters + one presence flag per parameter + the loss); approximate = T flags +
  3 float64 per task + every parameter (+ flags) once;
* bytes broadcast (rank 0's BatchNorm buffers before each step, both modes);
* wall time of the step on rank 0 and the part of it spent in the wrapper's collectives (this
  includes waiting for the slower rank);
* the all-reduces of one step replayed alone (same sizes, same order, after a barrier): the pure
  communication time on this machine.

    python benchmarks/bench_dist.py [--steps 10] [--out benchmarks/results/dist.json]
"""
import argparse
import json
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

from bench_tbgc import build_demo, cpu_machine, write_result  # noqa: E402

MODES = ('exact', 'approximate')


def build(data_root, rank):
    return build_demo(data_root, 'allinone_demo.py', rank=rank, init_weights=True)


def expected_bytes(model, mode):
    """Bytes one step all-reduces, from the parameter partition (float32 parameters)."""
    part = model.parameter_partition()
    n = {g: sum(p.numel() for p in ps) for g, ps in part.items()}
    k = {g: len(ps) for g, ps in part.items()}
    tasks = [g for g in part if g != 'shared']
    if mode == 'exact':
        return 4 * (len(tasks) + sum(n['shared'] + n[t] + k['shared'] + k[t] + 1 for t in tasks))
    return 4 * (len(tasks) + sum(n.values()) + sum(k.values())) + 8 * 3 * len(tasks)


def worker(rank, world, init_file, args, out_file):
    import torch
    import torch.distributed as dist
    from mmengine.optim import build_optim_wrapper

    from projects.allinone.engine.model_wrappers import MultiTaskDistributedDataParallel, TaskGradSync
    torch.set_num_threads(args.threads)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    comm = {m: 0.0 for m in MODES}
    current = [None]

    def timed(fn):
        def wrapper(self, *a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(self, *a, **kw)
            finally:
                comm[current[0]] += time.perf_counter() - t0
        return wrapper

    for name in ('begin_step', 'average_grads', 'task_stats', 'broadcast'):
        setattr(TaskGradSync, name, timed(getattr(TaskGradSync, name)))
    calls = {m: [] for m in MODES}  # (numel, dtype) of each all-reduce of the last step
    _all_reduce = TaskGradSync._all_reduce

    def recording(self, tensor, async_op=False):
        calls[current[0]].append((tensor.numel(), tensor.dtype))
        return _all_reduce(self, tensor, async_op)

    TaskGradSync._all_reduce = recording
    arms = {}
    for mode in MODES:
        cfg, model, batches = build(args.data, rank)
        ddp = MultiTaskDistributedDataParallel(model, mode=mode)
        ow = build_optim_wrapper(model, cfg.optim_wrapper)
        ow.stats_interval = 0  # no cosine logging pass: the steady state
        arms[mode] = (ddp, ow, batches)
    times = {m: [] for m in MODES}
    comm_steps = {m: [] for m in MODES}
    before = {}
    for i in range(args.warmup + args.steps):
        order = MODES if i % 2 == 0 else MODES[::-1]
        for mode in order:
            ddp, ow, batches = arms[mode]
            if i == args.warmup:
                before[mode] = dict(ddp.grad_sync.counters)
            current[0] = mode
            calls[mode] = []
            c0 = comm[mode]
            dist.barrier()
            t0 = time.perf_counter()
            ddp.train()
            ddp.train_step(batches, ow)
            if i >= args.warmup:
                times[mode].append(time.perf_counter() - t0)
                comm_steps[mode].append(comm[mode] - c0)
    replay = {}
    for mode in MODES:
        tensors = [torch.ones(n, dtype=dt) for n, dt in calls[mode]]
        runs = []
        for _ in range(5):
            dist.barrier()
            t0 = time.perf_counter()
            for t in tensors:
                dist.all_reduce(t)
            runs.append(time.perf_counter() - t0)
        replay[mode] = statistics.median(runs)
    if rank == 0:
        res = {}
        for mode in MODES:
            ddp = arms[mode][0]
            after = ddp.grad_sync.counters
            per = {k: (after[k] - before[mode][k]) / args.steps for k in after}
            res[mode] = dict(allreduce_bytes_per_step=per['allreduce_bytes'],
                             allreduce_calls_per_step=per['allreduce_calls'],
                             expected_allreduce_bytes_per_step=expected_bytes(ddp.module, mode),
                             broadcast_bytes_per_step=per['broadcast_bytes'],
                             median_step_s=statistics.median(times[mode]),
                             median_comm_s=statistics.median(comm_steps[mode]),
                             allreduce_alone_s=replay[mode])
        model = arms['exact'][0].module
        part = model.parameter_partition()
        res['params'] = {g: sum(p.numel() for p in ps) for g, ps in part.items()}
        res['batch_per_rank'] = {t: len(b['inputs']) for t, b in arms['exact'][2].items()}
        with open(out_file, 'w') as f:
            json.dump(res, f)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=osp.join(REPO, 'data', 'demo'))
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--threads', type=int, default=1, help='torch threads per process')
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
    print('| mode | all-reduced / step (MB) | expected (MB) | all-reduce calls / step | broadcast / step (MB) '
          '| median step (s) | of which in collectives (s) | the all-reduces alone (s) |')
    print('|---|---|---|---|---|---|---|---|')
    for mode in MODES:
        r = res[mode]
        print(f"| {mode} | {r['allreduce_bytes_per_step'] / mb:.2f} "
              f"| {r['expected_allreduce_bytes_per_step'] / mb:.2f} "
              f"| {r['allreduce_calls_per_step']:.0f} | {r['broadcast_bytes_per_step'] / mb:.3f} "
              f"| {r['median_step_s']:.3f} | {r['median_comm_s']:.3f} | {r['allreduce_alone_s']:.3f} |")


if __name__ == '__main__':
    main()
