#!/usr/bin/env python
"""Train the same config with several multi-task methods and compare them side by side.

    python tools/compare_methods.py --methods vanilla tbgc pcgrad cagrad gradsplit recon recon+pcgrad \
        [--config configs/allinone_demo.py] [--max-iters 500] [--val-points 4] [--out work_dirs/methods] \
        [--recon-report REPORT] [--threads 1] [--bench-steps 10]

Each method (a name of ``METHOD_PRESETS``, a ``+`` chain such as ``tbgc+pcgrad``, or an aggregator
class name) gets a child config of ``--config`` that changes only ``optim_wrapper.aggregator`` (and
drops the global clip for TBGC, which replaces it); all runs share the seed, data and schedule.
A model-side method of ``MODEL_METHODS`` (``gradsplit``, ``recon``) adds its ``model`` (or
``train_cfg``) keys, alone (with the vanilla aggregator) or with aggregators: ``recon+pcgrad``,
``gradsplit+tbgc`` (at most one model-side part per name). Recon's layers come from
``--recon-report``, or from a search run once before training (``tools/recon_search.py`` on
``--config`` for a quarter of the run length, into ``--out/recon_search``; reused when its report exists).
Runs already finished in ``--out`` (validated at their last iteration) are reused (delete a
run's folder to redo it). Then the
per-step cost of every method is measured on the demo model (``benchmarks/bench_methods.py``:
interleaved steps, ratio to the vanilla step, profiler peak memory), and the tool writes
``--out/methods.md`` (per-task scores, leaderboard A, training time per iteration, step cost and
peak memory) and ``--out/curves.png`` (each task's validation score over training).
"""
import argparse
import json
import keyword
import os
import os.path as osp
import re
import shutil
import statistics
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _py(obj) -> str:
    """Python source of a config value, dicts with identifier keys as ``dict(k=v)``."""
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k) for k in obj):
            return 'dict(' + ', '.join(f'{k}={_py(v)}' for k, v in obj.items()) + ')'
        return '{' + ', '.join(f'{k!r}: {_py(v)}' for k, v in obj.items()) + '}'
    if isinstance(obj, list):
        return '[' + ', '.join(_py(v) for v in obj) + ']'
    if isinstance(obj, tuple):
        return '(' + ''.join(f'{_py(v)}, ' for v in obj).rstrip(' ') + ')'
    return repr(obj)


def child_config(base: str, method: str, path: str, max_iters=None, val_points=4, seed=None, **context) -> None:
    """A config that differs from ``base`` in the method only (and, with ``max_iters``, in a
    schedule shrunk in proportion: every iteration-based scheduler boundary scales with it; with
    ``seed``, in ``randomness.seed``).

    The method's overrides (``method_config_overrides(method, **context)``: the aggregator, and a
    model-side method's ``model`` / ``train_cfg`` / ... keys) and the schedule's are merged first, so
    each top-level key is written once and inherits from ``base`` key by key. ``single:<task>`` is the
    single-task baseline: the vanilla method with every other task dropped (``task=None`` in
    ``model.tasks`` and in each loader and evaluator dict)."""
    from mmengine.config import Config

    from projects.allinone.methods import merge_overrides, method_config_overrides
    from projects.allinone.utils.method_table import SINGLE, is_single
    from projects.allinone.utils.schedule import scale_schedulers
    over = method_config_overrides('vanilla' if is_single(method) else method, **context)
    if is_single(method):
        tasks = list(Config.fromfile(base).model.tasks)
        if method[len(SINGLE):] not in tasks:
            raise KeyError(f'{method}: no task {method[len(SINGLE):]!r} in {base} (tasks: {tasks})')
        drop = {t: None for t in tasks if t != method[len(SINGLE):]}
        over.update(model=dict(tasks=drop), **{k: dict(drop) for k in (
            'train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator', 'test_evaluator')})
    if seed is not None:
        over['randomness'] = dict(seed=int(seed))
    over['optim_wrapper']['aggregator'] = dict(_delete_=True, **over['optim_wrapper']['aggregator'])
    if max_iters:
        cfg = Config.fromfile(base)
        scheds = scale_schedulers(over.get('param_scheduler', cfg.get('param_scheduler')),
                                  max_iters / cfg.train_cfg.max_iters)
        interval = max(1, max_iters // max(1, val_points))
        over = merge_overrides(over, dict(train_cfg=dict(max_iters=max_iters, val_interval=interval),
                                          param_scheduler=scheds,
                                          default_hooks=dict(checkpoint=dict(interval=max_iters))))
    lines = [f'# {method}: written by tools/compare_methods.py', f'_base_ = [{osp.abspath(base)!r}]']
    lines += [f'{key} = {_py(value)}' for key, value in over.items()]
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def thread_env(threads):
    env = dict(os.environ)
    if threads:  # on a shared machine, one thread avoids the thrash of oversubscribed OpenMP
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


_ITER_LINE = re.compile(r'Iter\(train\) \[\s*(\d+)/(\d+)\]')


def run_with_progress(cmd, log_path, env, desc, total):
    """Run a training command with its output in ``log_path`` and a bar over its logged iterations."""
    from projects.allinone.engine.hooks.progress_hook import progress_bar
    bar = progress_bar(total, desc, 'iter', file=sys.stdout)
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(env, PYTHONUNBUFFERED='1'))
        for line in proc.stdout:
            log.write(line)
            m = _ITER_LINE.search(line)
            if m and int(m.group(1)) > bar.n:
                bar.update(int(m.group(1)) - bar.n)
        rc = proc.wait()
    bar.close()
    return rc


def recon_search(args, max_iters) -> str:
    """Recon's layer search on ``--config`` (a quarter of the run length) into ``OUT/recon_search``, once:
    an existing report is reused. Returns the report's path."""
    work_dir = osp.join(args.out, 'recon_search')
    report = osp.join(work_dir, 'recon_search', 'recon_report.json')  # recon_search.py's default names
    if osp.exists(report):
        print(f'[recon search] reusing {report}', flush=True)
        return report
    iters = max(1, max_iters // 4)
    cmd = [sys.executable, osp.join(REPO, 'tools', 'recon_search.py'), args.config, '--iters', str(iters),
           '--work-dir', work_dir] + (['--data-root', args.data_root] if getattr(args, 'data_root', None) else [])
    print(f'[recon search] {iters} iterations: {" ".join(cmd)}', flush=True)
    t0 = time.time()
    log = osp.join(args.out, 'recon_search.log')
    rc = run_with_progress(cmd, log, thread_env(args.threads), '[recon search]', iters)
    if rc != 0 or not osp.exists(report):
        raise RuntimeError(f'[recon search] failed (exit {rc}, report {report} missing); see {log}')
    print(f'[recon search] done in {time.time() - t0:.0f} s: {report}', flush=True)
    return report


def train(method, args, run_dir):
    cfg_path = osp.join(args.out, 'configs', method.replace('+', '_') + '.py')
    os.makedirs(osp.dirname(cfg_path), exist_ok=True)
    child_config(args.config, method, cfg_path, args.max_iters, args.val_points, recon_report=args.recon_report)
    cmd = [sys.executable, osp.join(REPO, 'tools', 'train.py'), cfg_path, '--work-dir', run_dir]
    print(f'[{method}] training: {" ".join(cmd)}', flush=True)
    t0 = time.time()
    log = osp.join(args.out, f"{method.replace('+', '_')}.log")
    from mmengine.config import Config
    total = args.max_iters or Config.fromfile(cfg_path).train_cfg.max_iters
    rc = run_with_progress(cmd, log, thread_env(args.threads), f'[{method}]', total)
    if rc != 0:
        raise RuntimeError(f'[{method}] training failed (exit {rc}); see {log}')
    print(f'[{method}] done in {time.time() - t0:.0f} s', flush=True)


def finished(run_dir, max_iters) -> bool:
    """A run counts as done once it validated at its last iteration (not at an earlier round)."""
    hist = osp.join(run_dir, 'leaderboard_history.json')
    if not osp.exists(hist):
        return False
    with open(hist) as f:
        return any(h.get('mode') == 'val' and h.get('iter') == max_iters for h in json.load(f))


def read_run(run_dir):
    with open(osp.join(run_dir, 'leaderboard.json')) as f:
        board = json.load(f)
    history = []
    hist = osp.join(run_dir, 'leaderboard_history.json')
    if osp.exists(hist):
        with open(hist) as f:
            history = [h for h in json.load(f) if h.get('mode') == 'val']
    from projects.allinone.visualization.scalar_logs import load_scalar_logs
    try:  # every segment of a resumed run
        times = [r['time'] for r in load_scalar_logs(run_dir)[0] if 'time' in r]
    except FileNotFoundError:
        times = []
    half = times[len(times) // 2:]
    return board, history, (statistics.median(half) if half else float('nan'))


def plot(results, tasks, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = tasks + ['A']
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, t in zip(axes[0], panels):
        for i, (method, (_, history, _)) in enumerate(results.items()):
            xs = [h['iter'] for h in history if f'leaderboard/{t}' in h]
            ys = [h[f'leaderboard/{t}'] for h in history if f'leaderboard/{t}' in h]
            # 10 colours, then the same colours dashed (more than 10 methods would repeat a line's look)
            ax.plot(xs, ys, marker='o', ms=3, color=f'C{i % 10}', ls=('-', '--', ':', '-.')[i // 10 % 4],
                    label=method)
        ax.set_title('leaderboard A' if t == 'A' else t)
        ax.set_xlabel('iteration')
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel('validation score')
    axes[0][-1].legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_fingerprint(cfg_path, data_root=None):
    """``(fingerprint, schedule)`` of a child config as ``tools/train.py [--data-root]`` will train it."""
    from mmengine.config import Config

    from projects.allinone.utils.data_root import set_data_root
    from projects.allinone.utils.method_table import config_fingerprint
    cfg = Config.fromfile(cfg_path)
    if data_root:
        set_data_root(cfg, data_root)
    meta_path = osp.join(REPO, cfg.get('data_root') or '', 'meta.json')  # the demo generator's record
    meta = None
    if osp.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    train_cfg = cfg.train_cfg
    schedule = dict(max_iters=train_cfg.max_iters, val_interval=train_cfg.get('val_interval'),
                    loop=train_cfg.get('type'), data_root=osp.relpath(osp.join(REPO, cfg.get('data_root') or ''), REPO),
                    data_counts=(meta or {}).get('counts'),
                    param_scheduler=[{k: v for k, v in p.items()} for p in (cfg.get('param_scheduler') or [])])
    return config_fingerprint(cfg.to_dict(), REPO, meta), schedule


def compare_seeds(args):
    """``--seeds``: every (method, seed) trained once and summarised into ``--results`` (reused when there,
    refused when trained with another config), then the table with Δm% against ``single:<task>``."""
    from concurrent.futures import ThreadPoolExecutor

    from mmengine.config import Config

    from projects.allinone.methods import changes_train_loop, method_config_overrides, method_context_keys
    from projects.allinone.utils import method_table as mt
    base = Config.fromfile(args.config)
    tasks = [t for t, v in base.model.tasks.items() if v is not None]
    methods = list(dict.fromkeys(args.methods + ([mt.SINGLE + t for t in tasks] if args.single_task else [])))
    for m in methods:  # fail on a typo before hours of training
        if mt.is_single(m) and m[len(mt.SINGLE):] not in tasks:
            raise KeyError(f'{m}: the config has no task {m[len(mt.SINGLE):]!r} (tasks: {tasks})')
        if not mt.is_single(m):
            method_config_overrides(m)
    args.results = osp.abspath(args.results)
    args.data_root = osp.abspath(args.data_root) if args.data_root else None
    max_iters = args.max_iters or base.train_cfg.max_iters
    if not args.recon_report and any('recon_report' in method_context_keys(m) for m in methods if not mt.is_single(m)):
        args.recon_report = (osp.join(args.out, 'recon_search', 'recon_search', 'recon_report.json') if args.no_train
                             else recon_search(args, max_iters))
    runs, fingerprints = [], {}
    for s in args.seeds:  # seed by seed: an interrupted table has every method at the first seeds
        for m in methods:
            cfg_path = osp.join(args.out, 'configs', f'{mt.slug(m)}_s{s}.py')
            os.makedirs(osp.dirname(cfg_path), exist_ok=True)
            child_config(args.config, m, cfg_path, args.max_iters, args.val_points, seed=s,
                         recon_report=args.recon_report)
            if m not in fingerprints:  # the seed is not part of it
                fingerprints[m] = run_fingerprint(cfg_path, args.data_root)
            runs.append((m, s, cfg_path, osp.join(args.out, mt.slug(m), f'seed{s}')))

    summaries, refused, todo = {}, [], []
    for m, s, cfg_path, run_dir in runs:
        path = mt.summary_path(args.results, m, s)
        old = mt.load_summary(path)
        if old is None:
            todo.append((m, s, cfg_path, run_dir))
            continue
        try:
            mt.check_summary(old, fingerprints[m][0], osp.relpath(path, REPO))
            summaries[(m, s)] = old
        except mt.ScheduleMismatch as e:
            refused.append(str(e))
    if refused:
        raise mt.ScheduleMismatch('\n'.join(refused))
    print(f'{len(summaries)} of {len(runs)} runs summarised in {osp.relpath(args.results, REPO)}; '
          f'{len(todo)} to do', flush=True)

    def summarise(m, s, run_dir, t0=None):
        _, history, spi = read_run(run_dir)
        fp, schedule = fingerprints[m]
        summary = mt.run_summary(m, s, [m[len(mt.SINGLE):]] if mt.is_single(m) else tasks, history, spi, fp,
                                 schedule, config=osp.relpath(args.config, REPO), threads=args.threads,
                                 finished=time.strftime('%Y-%m-%d %H:%M'),
                                 wall_s=None if t0 is None else round(time.time() - t0))
        mt.write_summary(mt.summary_path(args.results, m, s), summary)
        summaries[(m, s)] = summary

    deadline = time.time() + 60 * args.stop_after if args.stop_after is not None else None
    failed, skipped = [], []

    def one(i, m, s, cfg_path, run_dir):
        try:
            train_one(i, m, s, cfg_path, run_dir)
        except Exception as e:  # one broken method does not stop the others' runs
            failed.append(f'{m} seed {s} ({type(e).__name__}: {e})')
            print(f'[{m} seed {s}] FAILED: {type(e).__name__}: {e}', flush=True)

    def train_one(i, m, s, cfg_path, run_dir):
        marker = osp.join(run_dir, 'compare_run.json')
        mine = False
        if osp.exists(marker):
            with open(marker) as f:
                mine = json.load(f).get('hash') == fingerprints[m][0]['hash']
        label = f'[{m} seed {s}] ({i + 1}/{len(todo)})'
        if mine and finished(run_dir, fingerprints[m][1]['max_iters']):
            print(f'{label} summarising the finished run in {run_dir}', flush=True)
            return summarise(m, s, run_dir)
        if args.no_train or (deadline is not None and time.time() > deadline):
            skipped.append((m, s))
            return
        if osp.isdir(run_dir):  # unfinished or of another config: its history would mix into the new one
            print(f'{label} removing the unfinished or outdated run in {run_dir}', flush=True)
            shutil.rmtree(run_dir)
        os.makedirs(run_dir)
        with open(marker, 'w') as f:
            json.dump(dict(method=m, seed=s, hash=fingerprints[m][0]['hash']), f)
        cmd = [sys.executable, osp.join(REPO, 'tools', 'train.py'), cfg_path, '--work-dir', run_dir]
        cmd += ['--data-root', args.data_root] if args.data_root else []
        log = osp.join(args.out, 'logs', f'{mt.slug(m)}_s{s}.log')
        os.makedirs(osp.dirname(log), exist_ok=True)
        print(f'{label} training: {" ".join(cmd)}', flush=True)
        t0 = time.time()
        with open(log, 'w') as f:
            rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=thread_env(args.threads))
        if rc != 0 or not finished(run_dir, fingerprints[m][1]['max_iters']):
            failed.append(f'{m} seed {s} (exit {rc}; see {log})')
            print(f'{label} FAILED (exit {rc}); see {log}', flush=True)
            return
        summarise(m, s, run_dir, t0)
        print(f'{label} done in {time.time() - t0:.0f} s: {mt.summary_path(args.results, m, s)}', flush=True)

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for future in [pool.submit(one, i, *run) for i, run in enumerate(todo)]:
            future.result()

    cost_path = osp.join(args.results, 'cost.json')
    cost = {}
    if osp.exists(cost_path):
        with open(cost_path) as f:
            cost = json.load(f)
    need = [m for m in methods if not mt.is_single(m) and not changes_train_loop(m) and m not in cost]
    if args.bench_steps and need:
        from projects.allinone.benchmarking.method_cost import measure
        arms = list(dict.fromkeys(['vanilla'] + need))
        print(f'measuring the step cost of {len(arms)} methods ({args.bench_steps} interleaved steps)...', flush=True)
        res = measure(arms, args.data_root or args.data, steps=args.bench_steps, threads=args.threads or 2,
                      context=dict(recon_report=args.recon_report))
        ref = res['speed']['vanilla']['ratio_to_joint']
        for m in arms:
            if m in res['speed'] and (m not in cost or m in need):
                cost[m] = dict(ratio_to_vanilla=round(res['speed'][m]['ratio_to_joint'] / ref, 4),
                               peak_tensor_mb=res['peak_tensor_mb'].get(m), steps=args.bench_steps,
                               measured_with=arms, date=time.strftime('%Y-%m-%d'), machine=res.get('machine'))
        os.makedirs(args.results, exist_ok=True)
        with open(cost_path, 'w') as f:
            json.dump(cost, f, indent=1)

    comp = mt.compare(summaries, methods, args.seeds, tasks)
    schedule = next(iter(fingerprints.values()))[1]
    counts = ', '.join(f'{t} {a}/{b}' for t, (a, b) in (schedule['data_counts'] or {}).items())
    note = (f"(config {osp.relpath(args.config, REPO)}, {schedule['max_iters']} iterations, validation every "
            f"{schedule['val_interval']}, data {schedule['data_root']}"
            f"{f' ({counts} train/val images)' if counts else ''}, seeds "
            f"{' '.join(map(str, args.seeds))}, {args.threads or 'default'} thread(s) per run; scores: last "
            'validation; step cost: benchmarks/bench_methods.py, interleaved, ratio to the vanilla step of the same '
            'measurement; methods with their own training loop have none)')
    text = mt.table_markdown(comp, cost) + '\n' + note + '\n'
    os.makedirs(args.results, exist_ok=True)
    with open(osp.join(args.results, 'comparison.md'), 'w') as f:
        f.write(text)
    with open(osp.join(args.results, 'comparison.json'), 'w') as f:
        json.dump(comp, f, indent=1)
    mt.plot_bands(summaries, methods, args.seeds, tasks, osp.join(args.results, 'curves.png'))
    print(text)
    if skipped:
        print(f"not trained ({'--no-train' if args.no_train else '--stop-after reached'}): "
              f"{', '.join(f'{m} seed {s}' for m, s in skipped)}")
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed: {'; '.join(failed)}")
    return comp


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--methods', nargs='+', required=True)
    p.add_argument('--config', default=osp.join(REPO, 'configs', 'allinone_demo.py'))
    p.add_argument('--max-iters', type=int, help="another schedule length (the config's schedulers scaled to it)")
    p.add_argument('--val-points', type=int, default=4, help='validations per run with --max-iters')
    p.add_argument('--out', default=osp.join(REPO, 'work_dirs', 'methods'))
    p.add_argument('--threads', type=int, help='torch threads of each training run (default: torch\'s own)')
    p.add_argument('--bench-steps', type=int,
                   help='interleaved steps of the cost benchmark (0: skip; default 10, with --no-train 0)')
    p.add_argument('--data', default=osp.join(REPO, 'data', 'demo'), help='demo data for the cost benchmark')
    p.add_argument('--recon-report', help='Recon search report for the recon methods (default: search once into '
                   'OUT/recon_search, a quarter of the run length)')
    seeds = p.add_argument_group('several seeds (all of these need --seeds)')
    seeds.add_argument('--seeds', type=int, nargs='+', help='train every method once per seed (randomness.seed)')
    seeds.add_argument('--single-task', action='store_true',
                       help='add the single-task baselines single:<task> of every task of the config')
    seeds.add_argument('--jobs', type=int, default=1, help='training runs at a time, one process each')
    seeds.add_argument('--results', default=osp.join(REPO, 'benchmarks', 'results', 'methods_seeds'),
                       help='one JSON summary per (method, seed): reused, and refused if trained with another config')
    seeds.add_argument('--data-root',
                       help="train on this data root instead of the config's (tools/train.py --data-root)")
    seeds.add_argument('--stop-after', type=float, metavar='MIN', help='start no new run after MIN minutes')
    seeds.add_argument('--no-train', action='store_true',
                       help='only tabulate the summaries there are (with --bench-steps N: measure the missing step '
                       'costs first)')
    args = p.parse_args(argv)
    if args.bench_steps is None:
        args.bench_steps = 0 if args.no_train else 10
    args.out = osp.abspath(args.out)
    args.config = osp.abspath(args.config)
    if args.recon_report:
        args.recon_report = osp.abspath(args.recon_report)
    os.makedirs(args.out, exist_ok=True)
    if args.seeds:
        return compare_seeds(args)

    from projects.allinone.methods import changes_train_loop, method_config_overrides, method_context_keys
    for m in args.methods:  # fail on a typo before hours of training
        method_config_overrides(m)
    from mmengine.config import Config
    max_iters = args.max_iters or Config.fromfile(args.config).train_cfg.max_iters
    if not args.recon_report and any('recon_report' in method_context_keys(m) for m in args.methods):
        args.recon_report = recon_search(args, max_iters)
    results = {}
    for m in args.methods:
        run_dir = osp.join(args.out, m.replace('+', '_'))
        if not finished(run_dir, max_iters):
            train(m, args, run_dir)
        else:
            print(f'[{m}] reusing the finished run in {run_dir}')
        results[m] = read_run(run_dir)

    cost = None
    if args.bench_steps:
        from projects.allinone.benchmarking.method_cost import measure
        print(f'measuring the step cost of {len(args.methods)} methods ({args.bench_steps} interleaved steps)...',
              flush=True)
        cost = measure(list(args.methods), args.data, steps=args.bench_steps, threads=args.threads or 2,
                       context=dict(recon_report=args.recon_report))
        with open(osp.join(args.out, 'cost.json'), 'w') as f:
            json.dump(cost, f, indent=1)

    first = next(iter(results.values()))[0]
    tasks = [k.split('/', 1)[1] for k in first if k.startswith('leaderboard/') and k != 'leaderboard/A'
             and not k.startswith('leaderboard/B')]
    head = '| method | ' + ' | '.join(tasks) + ' | leaderboard A | train s/iter |'
    sep = '|---' * (len(tasks) + 3)
    if cost:
        head += ' step / vanilla | peak tensor MB |'
        sep += '|---|---'
        base = cost['speed']['vanilla']['ratio_to_joint'] if 'vanilla' in cost['speed'] else 1.0
    lines = [head, sep + '|']
    for m, (board, _, t_iter) in results.items():
        row = f'| {m} | ' + ' | '.join(f"{board.get(f'leaderboard/{t}', float('nan')):.4f}" for t in tasks)
        row += f" | {board['leaderboard/A']:.4f} | {t_iter:.3f} |"
        if cost and m in cost['speed']:
            mem = cost['peak_tensor_mb'].get(m, float('nan'))
            row += f" {cost['speed'][m]['ratio_to_joint'] / base:.3f} | {mem:.1f} |"
        elif cost:
            row += ' - | - |'
        lines.append(row)
    note = (f"config {osp.relpath(args.config, REPO)}, {args.max_iters or 'config'} iterations, same seed, "
            f"{args.threads or 'default'} thread(s) per run; scores: last validation")
    loops = [m for m in args.methods if changes_train_loop(m)]
    if cost and loops:
        note += (f"; no step cost for {', '.join(loops)}: its own training loop (train_cfg type), which one "
                 'optim-wrapper step of the benchmark does not run')
    if args.recon_report and any('recon_report' in method_context_keys(m) for m in args.methods):
        note += f'; Recon layers from {osp.relpath(args.recon_report, REPO)}'
    text = '\n'.join(lines) + f'\n\n({note})\n'
    with open(osp.join(args.out, 'methods.md'), 'w') as f:
        f.write(text)
    plot(results, tasks, osp.join(args.out, 'curves.png'))
    print(text)
    print(f"written: {osp.join(args.out, 'methods.md')}, {osp.join(args.out, 'curves.png')}")


if __name__ == '__main__':
    main()
