#!/usr/bin/env python
"""Plot what each task's gradient did over training, for one run or several side by side.

    python tools/analyze_logs.py WORK_DIR [WORK_DIR ...] [--names vanilla tbgc] [--out DIR]
        [--keys lr det.loss_cls ...] [--start ITER] [--dpi 90]

Reads the scalars mmengine's ``LocalVisBackend`` logged (``WORK_DIR/*/vis_data/scalars.json``, every
segment of a resumed run) and writes ``OUT/gradients.png``: one column per run, one row per
quantity, a line per task (the same y range across runs in a row):

* ``{task}.loss``; the backbone gradient norm before aggregation (``{task}.grad_norm``) and as it
  enters the combined update (``{task}.grad_norm_agg``); the method's weight (``{task}.weight``);
* the pairwise cosines of the task gradients (``cos.{a}-{b}``) as lines, and as a task-pair x
  iteration heat map (red: conflict, blue: agreement).

``--keys`` adds ``OUT/keys.png`` with any other logged scalars. ``OUT/analyze.json`` holds every
plotted series (``{run: {key: [[step, value], ...]}}``). Default ``OUT``: ``work_dirs/analyze_logs``.
"""
import argparse
import json
import os
import os.path as osp
import sys

from projects.allinone.visualization.scalar_logs import (
    cosine_pairs,
    fresh_cosines,
    load_scalar_logs,
    series,
    task_names,
)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: (key suffix, row title, log scale when every value is positive)
TASK_ROWS = [('loss', 'loss', True),
             ('grad_norm', 'backbone grad norm, before aggregation', True),
             ('grad_norm_agg', 'backbone grad norm, as aggregated', True),
             ('weight', 'weight in the update', True)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('work_dirs', nargs='+', metavar='WORK_DIR', help='work dirs of training runs')
    p.add_argument('--names', nargs='+', help='a name per run (default: the folder names)')
    p.add_argument('--out', default=osp.join('work_dirs', 'analyze_logs'), help='output folder')
    p.add_argument('--keys', nargs='+', default=[], help='more logged scalars to plot (OUT/keys.png)')
    p.add_argument('--start', type=int, default=0, help='plot from this iteration on')
    p.add_argument('--dpi', type=int, default=90)
    args = p.parse_args(argv)
    names = args.names or [osp.basename(osp.normpath(w)) for w in args.work_dirs]
    if len(names) != len(args.work_dirs):
        p.error(f'--names: {len(names)} names for {len(args.work_dirs)} runs')
    if len(set(names)) != len(names):
        p.error(f'run names must differ (got {names}); pass --names')
    args.names = names
    return args


def load_run(work_dir, start=0):
    if not osp.isdir(work_dir):
        raise FileNotFoundError(f'{work_dir}: no such folder')
    train, _, files = load_scalar_logs(work_dir)
    train = [r for r in train if r['step'] >= start]
    tasks = task_names(train)
    if not tasks:
        raise ValueError(f'{work_dir}: the logs ({len(files)} file(s)) hold no per-task gradient statistics '
                         '({task}.grad_norm); was it trained with MultiTaskOptimWrapper?')
    return train, tasks


def share_row_range(axes, log):
    """The same y range (from the plotted data, with a margin) on every panel of a row; log scale
    when asked and every value is positive."""
    import numpy as np
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    values = np.concatenate([np.asarray(ln.get_ydata(), float) for ax in axes for ln in ax.lines] or [np.zeros(0)])
    values = values[np.isfinite(values)]
    if not values.size:
        return
    lo, hi = float(values.min()), float(values.max())
    log = log and lo > 0
    if log:
        span = max(hi / lo, 1.0001) ** 0.06
        lo, hi = lo / span, hi * span
    else:
        pad = 0.06 * (hi - lo) or 0.06 * max(abs(hi), 1e-12)
        lo, hi = lo - pad, hi + pad
    for ax in axes:
        if log:
            ax.set_yscale('log')
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:g}'))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(lo, hi)


def _heat_edges(steps):
    """Cell edges around each measurement step (midpoints between neighbours)."""
    if len(steps) == 1:
        return [steps[0] - 0.5, steps[0] + 0.5]
    mids = [(a + b) / 2 for a, b in zip(steps, steps[1:])]
    return [2 * steps[0] - mids[0]] + mids + [2 * steps[-1] - mids[-1]]


def main(argv=None):
    args = parse_args(argv)
    runs = {n: load_run(w, args.start) for n, w in zip(args.names, args.work_dirs)}
    tasks = []  # every task of any run, first-seen order; a colour per task across runs
    for _, ts in runs.values():
        tasks += [t for t in ts if t not in tasks]
    colour = {t: f'C{i % 10}' for i, t in enumerate(tasks)}
    data = {}

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    n_rows, n_cols = len(TASK_ROWS) + 2, len(runs)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.6 * n_cols + 0.8, 2.0 * n_rows), squeeze=False,
                             sharex='col')
    heat = None
    for c, (name, (rows, run_tasks)) in enumerate(runs.items()):
        data[name] = {}
        for r, (suffix, title, log) in enumerate(TASK_ROWS):
            ax = axes[r][c]
            for t in run_tasks:
                xs, ys = series(rows, f'{t}.{suffix}')
                data[name][f'{t}.{suffix}'] = [[x, y] for x, y in zip(xs, ys)]
                if xs:
                    ax.plot(xs, ys, color=colour[t], lw=1.1, label=t)
            ax.set_title(f'{name}: {title}' if r == 0 else title, fontsize=9)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
        pairs = cosine_pairs(rows)
        ax_line, ax_heat = axes[len(TASK_ROWS)][c], axes[len(TASK_ROWS) + 1][c]
        ax_line.set_title('pairwise gradient cosine', fontsize=9)
        ax_heat.set_title('pairwise gradient cosine (heat map)', fontsize=9)
        for ax in (ax_line, ax_heat):
            ax.tick_params(labelsize=7)
        if pairs:
            steps, values = fresh_cosines(rows, pairs)
            for i, p in enumerate(pairs):
                data[name][p] = [[x, y] for x, y in zip(steps, values[i])]
                ax_line.plot(steps, values[i], lw=1.1, color=f'C{(len(tasks) + i) % 10}', label=p[len('cos.'):])
            ax_line.axhline(0, color='k', lw=0.6)
            ax_line.set_ylim(-1, 1)
            ax_line.grid(alpha=0.3)
            ax_line.legend(fontsize=7, loc='lower right')
            if steps:
                heat = ax_heat.pcolormesh(_heat_edges(steps), range(len(pairs) + 1), values, cmap='RdBu',
                                          vmin=-1, vmax=1, shading='flat')
            ax_heat.set_yticks([i + 0.5 for i in range(len(pairs))])
            ax_heat.set_yticklabels([p[len('cos.'):] for p in pairs], fontsize=7)
        else:
            for ax in (ax_line, ax_heat):
                ax.text(0.5, 0.5, 'no cos.* logged (one task?)', ha='center', va='center',
                        transform=ax.transAxes, fontsize=8)
        ax_heat.set_xlabel('iteration', fontsize=8)
    for r in range(len(TASK_ROWS)):  # one y range per row: the runs compare at a glance
        share_row_range(axes[r], log=TASK_ROWS[r][2])
    handles = [plt.Line2D([], [], color=colour[t], lw=2) for t in tasks]
    fig.legend(handles, tasks, loc='upper right', fontsize=8, ncol=len(tasks), frameon=False)
    fig.tight_layout(rect=(0, 0, 0.975, 0.98))
    if heat is not None:
        fig.colorbar(heat, ax=list(axes[-1]), fraction=0.02, pad=0.01).ax.tick_params(labelsize=7)
    os.makedirs(args.out, exist_ok=True)
    written = [osp.join(args.out, 'gradients.png')]
    fig.savefig(written[0], dpi=args.dpi)
    plt.close(fig)

    if args.keys:
        fig, axes = plt.subplots(len(args.keys), 1, figsize=(7, 2.2 * len(args.keys)), squeeze=False)
        for ax, key in zip(axes[:, 0], args.keys):
            found = False
            for i, (name, (rows, _)) in enumerate(runs.items()):
                xs, ys = series(rows, key)
                data[name][key] = [[x, y] for x, y in zip(xs, ys)]
                if xs:
                    found = True
                    ax.plot(xs, ys, lw=1.1, color=f'C{i % 10}', label=name)
            if not found:
                known = sorted({k for rows, _ in runs.values() for r in rows for k in r})
                raise KeyError(f'--keys {key!r}: not logged by any run; logged keys: {", ".join(known)}')
            ax.set_title(key, fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[-1][0].set_xlabel('iteration')
        fig.tight_layout()
        written.append(osp.join(args.out, 'keys.png'))
        fig.savefig(written[-1], dpi=args.dpi)
        plt.close(fig)
    written.append(osp.join(args.out, 'analyze.json'))
    with open(written[-1], 'w') as f:
        json.dump(dict(runs=dict(zip(args.names, map(osp.abspath, args.work_dirs))), series=data), f)
    for name, (rows, ts) in runs.items():
        print(f'{name}: {len(rows)} logged training rows, iterations {rows[0]["step"]}-{rows[-1]["step"]}, '
              f'tasks {", ".join(ts)}' if rows else f'{name}: no training rows after --start')
    print('written: ' + ', '.join(written))
    return 0


if __name__ == '__main__':
    sys.exit(main())
