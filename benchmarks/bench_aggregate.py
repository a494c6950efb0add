#!/usr/bin/env python
"""Where a gradient method's extra step time goes: the aggregation work alone, on the demo's real gradients.

One step of the demo model (half-width ResNet-18 + RTMDet / FPNHead / linear head, T = 3) runs through
``MultiTaskOptimWrapper`` with a recording aggregator to capture the real ``(T, n)`` matrix of task
gradients. Then, interleaved repetition by repetition (shared machine noise), it times:

  rows       writing the T task gradients (per-parameter ``.grad`` tensors) into the ``(T, n)`` matrix,
             as the wrapper's matrix path does (vanilla's streaming path adds them into one buffer instead:
             ``stream`` below)
  rows_reused  the same into a matrix kept from the step before (the difference to ``rows`` is the cost
             of a fresh ``T x n`` allocation: page faults and zero-fill, every step)
  stream     what a streaming method does instead: T in-place adds into one buffer
  scale_copy the wrapper's ``result.grad * scale`` (a copy even when the scale is 1)
  scatter    the combined gradient back into per-parameter views
  gram       ``gram_matrix`` (the T x T Gram matrix every Gram method forms)
  <method>   ``aggregate()`` of each method, whole (Gram methods: Gram + weights + ``w @ G``)

and the vanilla step (mmengine ``OptimWrapper``, one backward of the summed loss) for scale. Times are
process CPU times (a shared machine's other jobs do not count); medians in ms and as a fraction of the
vanilla step. The matrix path's extra over vanilla is about
``rows + aggregate + scatter - stream``.

    python benchmarks/bench_aggregate.py [--methods mgda maxgnr upgrad ...] [--reps 20] [--threads 1]
        [--out benchmarks/results/aggregate.json]
"""
import argparse
import os.path as osp
import statistics
import subprocess
import sys
import time

from projects.allinone.benchmarking.demo import REPO, build, cpu_machine, step, write_result

DEFAULT_METHODS = ('vanilla', 'mgda', 'maxgnr', 'pcgrad', 'imtl', 'nashmtl', 'upgrad', 'dualproj', 'fairgrad',
                   'config', 'crmogm', 'imtl_hybrid', 'moco', 'dbmtl', 'excessmtl', 'graddrop')


def capture_gradients(model, batch):
    """The real ``(T, n)`` shared-gradient matrix of one demo step, and the shared parameters' grads."""
    import torch

    from projects.allinone.engine.aggregators import GradAggregator
    from projects.allinone.engine.aggregators._gram import make_result
    from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper

    class Capture(GradAggregator):
        def aggregate(self, grads, losses, own_norms=None, tasks=None):
            self.grads, self.losses, self.tasks = grads.clone(), losses.clone(), list(tasks)
            return make_result(grads, [1.0] * len(grads))

    cap = Capture()
    wrapper = MultiTaskOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0), aggregator=cap, stats_interval=0)
    step(model, wrapper, batch)
    shared = [p for _, p in model.shared_parameters()]
    return cap, shared


def timed(fn):
    """Process CPU time of ``fn()``: on a shared machine wall time also counts the other jobs."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--methods', nargs='+', default=list(DEFAULT_METHODS))
    p.add_argument('--data', default=osp.join(REPO, 'data', 'demo'))
    p.add_argument('--reps', type=int, default=20)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'results', 'aggregate.json'))
    args = p.parse_args()
    if not osp.exists(osp.join(args.data, 'meta.json')):
        subprocess.check_call([sys.executable, osp.join(REPO, 'tools', 'make_demo_data.py'), '--out', args.data])
    import copy

    import torch
    from mmengine.optim import OptimWrapper

    from projects.allinone.engine.aggregators._gram import gram_matrix
    from projects.allinone.engine.aggregators.base import build_aggregator
    from projects.allinone.methods import method_optim_overrides
    torch.set_num_threads(args.threads)

    model, batch = build(args.data)
    vanilla_model = copy.deepcopy(model)
    vanilla = OptimWrapper(torch.optim.AdamW(vanilla_model.parameters(), lr=1e-4), clip_grad=dict(max_norm=10.0))
    cap, shared = capture_gradients(model, batch)
    G, losses, tasks = cap.grads, cap.losses, cap.tasks
    T, n = G.shape
    per_task = [[torch.randn_like(p) for p in shared] for _ in range(T)]   # stand-ins of the .grad tensors
    methods = [m for m in args.methods if m != 'vanilla']
    aggs = {m: build_aggregator(method_optim_overrides(m)['aggregator']) for m in methods}
    for a in aggs.values():
        a.bind(tasks)

    def rows():
        M = torch.empty((T, n), dtype=G.dtype)
        for t in range(T):
            torch.cat([g.reshape(-1) for g in per_task[t]], out=M[t])

    kept = torch.empty((T, n), dtype=G.dtype)

    def rows_reused():
        for t in range(T):
            torch.cat([g.reshape(-1) for g in per_task[t]], out=kept[t])

    def stream():
        acc = [g.clone() for g in per_task[0]]
        for t in range(1, T):
            torch._foreach_add_(acc, per_task[t], alpha=0.5)

    def scatter():
        flat, offset = G[0], 0
        for p in shared:
            flat[offset:offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()

    parts = dict(rows=rows, rows_reused=rows_reused, stream=stream, scatter=scatter, scale_copy=lambda: G[0] * 1.0,
                 gram=lambda: gram_matrix(G))
    parts.update({m: (lambda a=a: a.aggregate(G, losses, None, tasks)) for m, a in aggs.items()})
    times = {k: [] for k in ['vanilla_step'] + list(parts)}
    for _ in range(2):                                    # warm-up (optimizer state, caches)
        step(vanilla_model, vanilla, batch)
        for fn in parts.values():
            fn()
    for r in range(args.reps):
        times['vanilla_step'].append(timed(lambda: step(vanilla_model, vanilla, batch)))
        keys = list(parts) if r % 2 == 0 else list(parts)[::-1]
        for k in keys:
            torch.manual_seed(r)
            times[k].append(timed(parts[k]))
    base = statistics.median(times['vanilla_step'])
    res = dict(shared_params=n, tasks=T, reps=args.reps, vanilla_step_s=base,
               ms={k: 1e3 * statistics.median(v) for k, v in times.items()},
               fraction_of_vanilla_step={k: statistics.median(v) / base for k, v in times.items()},
               spread_ms={k: [1e3 * min(v), 1e3 * max(v)] for k, v in times.items()},
               machine=cpu_machine(threads=args.threads))
    write_result(res, args.out)
    print(f'shared parameters {n:,}; T = {T}; {args.reps} interleaved repetitions; vanilla step {1e3 * base:.0f} ms')
    print('| part | median ms | min-max ms | / vanilla step |')
    print('|---|---|---|---|')
    for k in times:
        lo, hi = res['spread_ms'][k]
        print(f"| {k} | {res['ms'][k]:.2f} | {lo:.2f}-{hi:.2f} | {res['fraction_of_vanilla_step'][k]:.4f} |")


if __name__ == '__main__':
    main()
