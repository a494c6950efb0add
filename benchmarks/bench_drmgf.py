#!/usr/bin/env python
"""Cost of a DR-MGF round against the same number of vanilla steps, on the demo model.

A DR-MGF round is T task-dominant passes of K steps (with the gated forward and the importance step
while gating) plus K meta-fusion batches and the fusion; the baseline is T * K vanilla steps
(``MultiTaskOptimWrapper`` + ``SumAggregator``, what the loop's passes also run through). The two
arms alternate round by round in one process on the same real demo batch, so machine noise hits
them alike; the median of the per-round ratios is reported, per step (round time / (T * K)).
Memory: what DR-MGF stores besides the model (``DRMGF.memory_report``).

    python benchmarks/bench_drmgf.py [--round-iters 5] [--rounds 3] [--threads 1]
        [--out benchmarks/results/drmgf.json]
"""
import argparse
import copy
import os.path as osp
import statistics
import subprocess
import sys
import time

from projects.allinone.benchmarking.demo import REPO, build, cpu_machine, write_result


def vanilla_round(model, wrapper, batch, steps):
    for _ in range(steps):
        model.train_step(copy.copy(batch), wrapper)


def drmgf_round(model, wrapper, batch, drmgf, k, gated):
    drmgf.begin_round(model)
    for i, task in enumerate(drmgf.tasks):  # task order, as the loop by default
        if i:
            drmgf.restore_start(model)
        for _ in range(k):
            with drmgf.task_pass(model, task, gated):
                model.train_step(copy.copy(batch), wrapper)
            if gated:
                drmgf.step_importances()
        drmgf.end_pass(model, task, gated)

    def batches():
        while True:
            yield copy.copy(batch)
    drmgf.fuse(model, batches(), k, ema=not gated)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=osp.join(REPO, 'data', 'demo'))
    p.add_argument('--round-iters', type=int, default=5, help='K: steps of each task-dominant pass')
    p.add_argument('--rounds', type=int, default=3, help='measured rounds per mode (gated, frozen)')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'results', 'drmgf.json'))
    args = p.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    if not osp.exists(osp.join(args.data, 'meta.json')):
        subprocess.check_call([sys.executable, osp.join(REPO, 'tools', 'make_demo_data.py'), '--out', args.data])
    from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper
    from projects.allinone.routing.drmgf import DRMGF
    model, batch = build(args.data)
    models = dict(vanilla=model, drmgf=copy.deepcopy(model))
    wrappers = {a: MultiTaskOptimWrapper(torch.optim.AdamW(m.parameters(), lr=1e-4), clip_grad=dict(max_norm=10.0),
                                         stats_interval=0) for a, m in models.items()}
    for m in models.values():
        m.train()
    drmgf = DRMGF(models['drmgf'])
    T, K = len(drmgf.tasks), args.round_iters
    res = dict(T=T, round_iters=K, meta_iters=K, memory_mb=drmgf.memory_report(models['drmgf']),
               layers=len(drmgf.layer_names),
               machine=cpu_machine(threads=args.threads))
    vanilla_round(models['vanilla'], wrappers['vanilla'], batch, 2)  # warm-up
    for gated in (True, False):
        ratios, times = [], dict(vanilla=[], drmgf=[])
        for r in range(args.rounds):
            for arm in (('vanilla', 'drmgf') if r % 2 == 0 else ('drmgf', 'vanilla')):
                t0 = time.perf_counter()
                if arm == 'vanilla':
                    vanilla_round(models[arm], wrappers[arm], batch, T * K)
                else:
                    drmgf_round(models[arm], wrappers[arm], batch, drmgf, K, gated)
                times[arm].append((time.perf_counter() - t0) / (T * K))
            ratios.append(times['drmgf'][-1] / times['vanilla'][-1])
        mode = 'gated' if gated else 'frozen'
        res[mode] = dict(step_ratio=statistics.median(ratios), vanilla_step_s=statistics.median(times['vanilla']),
                         drmgf_step_s=statistics.median(times['drmgf']), ratios=ratios, times=times)
        print(f"{mode}: DR-MGF {res[mode]['drmgf_step_s']:.3f} s per training step (meta and fusion included) "
              f"vs vanilla {res[mode]['vanilla_step_s']:.3f} s: x{res[mode]['step_ratio']:.3f}", flush=True)
    mem = res['memory_mb']
    print(f"DR-MGF stores besides the model: start copy {mem['start_copy_mb']:.1f} MB, task deltas "
          f"{mem['task_deltas_mb']:.1f} MB, importances + coefficients {mem['importance_and_alpha_mb']:.1f} MB, "
          f"their Adam moments {mem['optimizer_moments_mb']:.1f} MB")
    write_result(res, args.out)


if __name__ == '__main__':
    main()
