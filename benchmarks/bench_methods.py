#!/usr/bin/env python
"""Per-step cost of each multi-task method against the vanilla joint step, on the demo model.

Every method runs through ``MultiTaskOptimWrapper`` on its own copy of the demo model (half-width
ResNet-18 backbone, RTMDet + FPNHead + linear head, T = 3) with the same real demo batches. The
arms are interleaved step by step in one process, so machine noise hits them alike, and the
median of the per-step ratios to the vanilla step (mmengine's ``OptimWrapper``: one backward of the
summed loss, global clip) is reported. Memory: each method alone in a fresh process, peak of the
profiler's tensor-memory timeline over one step after two warm-up steps (as bench_tbgc.py).

A model-side method (``gradsplit``, ``recon``, ``recon+pcgrad``, ...) runs on a demo model built with
its ``model`` overrides (``method_config_overrides``; Recon's layers from ``--recon-report``); one
that brings its own training loop (``train_cfg`` type) is skipped: one wrapper step is not its step.

    python benchmarks/bench_methods.py [--methods vanilla tbgc pcgrad gradsplit ...] [--steps 10]
        [--recon-report REPORT] [--out benchmarks/results/methods.json]
"""
import argparse
import os.path as osp
import subprocess
import sys

from projects.allinone.benchmarking.demo import REPO, write_result
from projects.allinone.benchmarking.method_cost import DEFAULT_METHODS, measure, table


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--methods', nargs='+', default=list(DEFAULT_METHODS))
    p.add_argument('--data', default=osp.join(REPO, 'data', 'demo'))
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--no-memory', action='store_true')
    p.add_argument('--recon-report', help="Recon search report for 'recon' methods (default: METHOD_CONTEXT's)")
    p.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'results', 'methods.json'))
    args = p.parse_args()
    if not osp.exists(osp.join(args.data, 'meta.json')):
        subprocess.check_call([sys.executable, osp.join(REPO, 'tools', 'make_demo_data.py'), '--out', args.data])
    context = dict(recon_report=osp.abspath(args.recon_report)) if args.recon_report else {}
    res = measure(args.methods, args.data, args.steps, args.warmup, args.threads, memory=not args.no_memory,
                  context=context)
    write_result(res, args.out)
    print(f"shared (backbone) parameters: {res['shared_params']:,}; T = 3; {args.steps} interleaved steps")
    print(table(res, args.methods))
    for m, why in res['skipped'].items():
        print(f'{m}: not measured ({why})')


if __name__ == '__main__':
    main()
