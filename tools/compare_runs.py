#!/usr/bin/env python
"""Compare finished runs: leaderboard scores and how each task's gradient reached the backbone.

    python tools/compare_runs.py work_dirs/demo_vanilla work_dirs/demo_tbgc [--names vanilla tbgc]
        [--out work_dirs/compare]

Reads each run's ``leaderboard.json`` and the scalars the LocalVisBackend logged
(``*/vis_data/scalars.json``; every segment of a resumed run), prints two Markdown tables (the
scores of every task and of every board the config defines; per-task backbone gradient norm before
and as aggregated, averaged over the second half of training, with the max/min ratio across tasks)
and writes them with a plot of the aggregated per-task norms to ``--out``.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import sys

from projects.allinone.visualization.scalar_logs import load_scalar_logs


def load_scalars(run):
    """Training rows of every segment of the run (a resumed run has one scalars.json per start)."""
    return load_scalar_logs(run)[0]


def load_board(run):
    path = osp.join(run, 'leaderboard.json')
    if not osp.exists(path):
        raise FileNotFoundError(f'{path} not found: run the training (with validation) first')
    with open(path) as f:
        return json.load(f)


def tasks_and_boards(board):
    """Split the ``leaderboard/*`` scores of a leaderboard.json into tasks and boards.

    A task has metrics of its own (``{task}/<metric>``); every other score is a board (a mean over
    tasks, as the config's ``leaderboard.boards`` defines: A, B, ...)."""
    names = [k[len('leaderboard/'):] for k in board if k.startswith('leaderboard/')]
    tasks = [n for n in names if any(k.startswith(n + '/') for k in board if not k.startswith('leaderboard/'))]
    return tasks, [n for n in names if n not in tasks]


def _union(lists):
    out = []
    for names in lists:
        out += [n for n in names if n not in out]
    return out


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
    split = [tasks_and_boards(b) for b in boards]
    tasks, board_names = _union(s[0] for s in split), _union(s[1] for s in split)
    fmt = lambda b, k: f"{b[k]:.4f}" if k in b else '-'  # noqa: E731
    lines = ['| run | ' + ' | '.join(tasks + [f'leaderboard {b}' for b in board_names]) + ' |',
             '|---' * (len(tasks) + len(board_names) + 1) + '|']
    for n, b in zip(names, boards):
        lines.append(f'| {n} | ' + ' | '.join(fmt(b, f'leaderboard/{t}') for t in tasks + board_names) + ' |')
    tasks = [t for t in tasks if any(f'{t}.grad_norm' in r for rows in scalars for r in rows)]
    lines += ['', '| run | quantity | ' + ' | '.join(tasks) + ' | max/min |', '|---' * (len(tasks) + 3) + '|']
    series = {}
    for n, rows in zip(names, scalars):
        half = rows[len(rows) // 2:]
        for key, label in (('grad_norm', 'backbone grad norm (raw)'), ('grad_norm_agg', 'as aggregated')):
            vals = [[r[f'{t}.{key}'] for r in half if f'{t}.{key}' in r] for t in tasks]
            vals = [statistics.mean(v) if v else float('nan') for v in vals]
            known = [v for v in vals if v == v]
            ratio = f'{max(known) / max(min(known), 1e-12):.1f}' if known else '-'
            lines.append(f'| {n} | {label} | ' + ' | '.join(f'{v:.4g}' for v in vals) + f' | {ratio} |')
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
