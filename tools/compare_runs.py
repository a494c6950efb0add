#!/usr/bin/env python
"""Compare finished runs: leaderboard scores and how each task's gradient reached the backbone.

    python tools/compare_runs.py work_dirs/demo_vanilla work_dirs/demo_tbgc [--names vanilla tbgc]
        [--out work_dirs/compare]

Reads each run's ``leaderboard.json`` and the scalars the LocalVisBackend logged
(``*/vis_data/scalars.json``), prints two Markdown tables (scores; per-task backbone gradient norm
before and as aggregated, averaged over the second half of training, with the max/min ratio across
tasks) and writes them with a plot of the aggregated per-task norms to ``--out``.
"""
import argparse
import glob
import json
import os
import os.path as osp
import statistics
import sys


def load_scalars(run):
    files = sorted(glob.glob(osp.join(run, '*', 'vis_data', 'scalars.json')), key=osp.getmtime)
    if not files:
        raise FileNotFoundError(f'{run}: no */vis_data/scalars.json (was the run made with LocalVisBackend?)')
    rows = []
    with open(files[-1]) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return [r for r in rows if 'loss' in r and 'step' in r]


def load_board(run):
    path = osp.join(run, 'leaderboard.json')
    if not osp.exists(path):
        raise FileNotFoundError(f'{path} not found: run the training (with validation) first')
    with open(path) as f:
        return json.load(f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('runs', nargs='+', help='work dirs of finished runs')
    p.add_argument('--names', nargs='+', help='a name per run (default: the folder names)')
    p.add_argument('--out', default='work_dirs/compare')
    args = p.parse_args(argv)
    names = args.names or [osp.basename(osp.normpath(r)) for r in args.runs]
    if len(names) != len(args.runs):
        p.error('--names needs one name per run')
    boards = [load_board(r) for r in args.runs]
    scalars = [load_scalars(r) for r in args.runs]
    tasks = [k[len('leaderboard/'):] for k in boards[0] if k.startswith('leaderboard/')
             and f"{k[len('leaderboard/'):]}.grad_norm" in scalars[0][-1]]
    lines = ['| run | ' + ' | '.join(tasks) + ' | leaderboard A |', '|---' * (len(tasks) + 2) + '|']
    for n, b in zip(names, boards):
        lines.append(f'| {n} | ' + ' | '.join(f"{b[f'leaderboard/{t}']:.4f}" for t in tasks)
                     + f" | {b['leaderboard/A']:.4f} |")
    lines += ['', '| run | quantity | ' + ' | '.join(tasks) + ' | max/min |', '|---' * (len(tasks) + 3) + '|']
    series = {}
    for n, rows in zip(names, scalars):
        half = rows[len(rows) // 2:]
        for key, label in (('grad_norm', 'backbone grad norm (raw)'), ('grad_norm_agg', 'as aggregated')):
            vals = [statistics.mean(r[f'{t}.{key}'] for r in half if f'{t}.{key}' in r) for t in tasks]
            lines.append(f'| {n} | {label} | ' + ' | '.join(f'{v:.4g}' for v in vals)
                         + f' | {max(vals) / max(min(vals), 1e-12):.1f} |')
        series[n] = {t: ([r['step'] for r in rows if f'{t}.grad_norm_agg' in r],
                         [r[f'{t}.grad_norm_agg'] for r in rows if f'{t}.grad_norm_agg' in r]) for t in tasks}
    text = '\n'.join(lines)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, 'compare.md'), 'w') as f:
        f.write(text + '\n')
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), sharey=True, squeeze=False)
    for ax, n in zip(axes[0], names):
        for t in tasks:
            ax.plot(*series[n][t], label=t, linewidth=1)
        ax.set_yscale('log')
        ax.set_title(f'{n}: per-task gradient entering the backbone update')
        ax.set_xlabel('iteration')
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel('norm')
    fig.tight_layout()
    fig.savefig(osp.join(args.out, 'grad_norms.png'), dpi=100)
    print(f"written: {osp.join(args.out, 'compare.md')}, {osp.join(args.out, 'grad_norms.png')}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
