"""Several methods over several seeds: per-run summaries, Δm% against single-task models, ranks, table.

``tools/compare_methods.py --seeds 0 1 2`` trains every (method, seed) and keeps one small JSON summary
per run (:func:`run_summary`, under ``benchmarks/results/methods_seeds/``), so that the table can be
filled over several sessions; this module holds what reads them back, with no training in it.

Conventions of the table:

* every task metric is higher-is-better (mAP@0.5, mIoU, top-1, in [0, 1]);
* Δm% of one run = (1/T) Σ_t (M_t − B_t) / B_t × 100 over the T tasks of the model, B_t the mean over
  seeds of task t's single-task baseline (``single:<task>``: the same config with the other tasks
  dropped). Positive = better than training each task alone, on average over the tasks. Papers after
  Nash-MTL print the negative of this (lower is better); the quantity is the same. Each seed gets its
  Δm%, the table shows their mean ± std;
* mean ± std: the sample standard deviation over seeds (n − 1); one seed has no ±;
* mean rank: per task, the methods of the table ranked by their mean score over seeds (1 = best, ties
  share the mean of their places), then averaged over the tasks.

A summary carries the fingerprint of the config it was trained with (:func:`config_fingerprint`: one
hash per top-level key, seed and logging left out) and :func:`check_summary` refuses one whose
fingerprint differs from the config the tool would train now, naming the keys, so that a changed
schedule, data set or method default is never averaged with the old one.
"""
import hashlib
import json
import math
import os
import os.path as osp
import statistics
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

#: prefix of the single-task baselines: ``single:det`` trains ``det`` alone
SINGLE = 'single:'
#: config keys that do not change what a run learns or scores (not fingerprinted)
UNFINGERPRINTED = ('work_dir', 'randomness', 'launcher', 'visualizer', 'vis_backends', 'log_level',
                   'log_processor', 'default_hooks', 'env_cfg', 'model_wrapper_cfg', 'test_dataloader',
                   'test_evaluator', 'test_cfg', 'resume')


def is_single(method: str) -> bool:
    return method.startswith(SINGLE)


def slug(method: str) -> str:
    """A file name for a method name (``tbgc+pcgrad`` -> ``tbgc_pcgrad``, ``single:det`` -> ``single-det``)."""
    return method.replace('+', '_').replace(':', '-')


def summary_path(results_dir: str, method: str, seed: int) -> str:
    return osp.join(results_dir, slug(method), f'seed{seed}.json')


# ----------------------------------------------------------------------------- fingerprints
def _plain(obj, repo: str):
    """JSON-able copy; strings under ``repo`` made relative (the same runs from another checkout match)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v, repo) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, repo) for v in obj]
    if isinstance(obj, str) and repo and obj.startswith(repo.rstrip('/') + '/'):
        return obj[len(repo.rstrip('/')) + 1:]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def config_fingerprint(cfg: dict, repo: str = '', data_meta: Optional[dict] = None) -> dict:
    """``dict(hash=..., keys={top-level key: hash})`` of a resolved config (``Config.to_dict()``), without
    :data:`UNFINGERPRINTED` keys; ``data_meta`` (the demo generator's ``meta.json``) is hashed as key
    ``data``, so regenerated data of another ``--scale`` or ``--seed`` does not match either."""
    keys = {k: _digest(_plain(v, repo)) for k, v in cfg.items() if k not in UNFINGERPRINTED}
    if data_meta is not None:
        keys['data'] = _digest(_plain(data_meta, repo))
    return dict(hash=_digest(keys), keys=keys)


class ScheduleMismatch(ValueError):
    """A committed run summary was trained with another config (schedule, data, method settings)."""


def check_summary(summary: dict, fingerprint: dict, path: str) -> None:
    """Raise :class:`ScheduleMismatch` if ``summary`` was trained with a config other than ``fingerprint``'s."""
    old = summary.get('fingerprint') or {}
    if old.get('hash') == fingerprint['hash']:
        return
    a, b = old.get('keys') or {}, fingerprint['keys']
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    sched = summary.get('schedule') or {}
    raise ScheduleMismatch(
        f"{path}: this run of {summary.get('method')!r} (seed {summary.get('seed')}) was trained with another "
        f"config: {', '.join(differ) or 'fingerprint'} differ (it ran {sched.get('max_iters')} iterations, "
        f"validation every {sched.get('val_interval')}). Its scores are not mixed with runs of this config: "
        'keep the old schedule, or give another --results folder (or delete the old summaries) to start a new table')


def run_summary(method: str, seed: int, tasks: Sequence[str], history: List[dict], seconds_per_iter: float,
                fingerprint: dict, schedule: dict, **extra) -> dict:
    """The small JSON record of one finished run: validation curve and final scores per task and board A.

    ``history``: the run's ``leaderboard_history.json`` entries (``mode == 'val'``), in order."""
    names = list(tasks) + ['A']
    curve = [dict(iter=h['iter'], **{t: h.get(f'leaderboard/{t}') for t in names}) for h in history
             if h.get('mode', 'val') == 'val']
    if not curve:
        raise ValueError(f'{method} seed {seed}: the run has no validation result')
    final = {t: curve[-1][t] for t in names}
    spi = None if seconds_per_iter is None or math.isnan(seconds_per_iter) else round(float(seconds_per_iter), 4)
    return dict(method=method, seed=seed, tasks=list(tasks), final=final, curve=curve, seconds_per_iter=spi,
                schedule=schedule, fingerprint=fingerprint, **extra)


def write_summary(path: str, summary: dict) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, path)  # a run killed while writing leaves the old file or none, never half of one


def load_summary(path: str) -> Optional[dict]:
    if not osp.exists(path):
        return None
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f'{path}: not a readable run summary ({e}); delete it to train that run again')


# ----------------------------------------------------------------------------- statistics
def mean_std(values: Iterable[float]) -> Tuple[float, Optional[float]]:
    """Mean and sample standard deviation (n − 1); ``std`` is None for one value."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError('mean_std of no values')
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def fmt_mean_std(values: Sequence[float], digits: int = 4, signed: bool = False) -> str:
    if not values:
        return '—'
    m, s = mean_std(values)
    m = 0.0 if round(m, digits) == 0 else m  # no '-0.00'
    text = f'{m:+.{digits}f}' if signed else f'{m:.{digits}f}'
    return text if s is None else f'{text} ± {s:.{digits}f}'


def delta_m(scores: Dict[str, float], baseline: Dict[str, float], tasks: Sequence[str]) -> float:
    """Δm% = (1/T) Σ_t (M_t − B_t) / B_t × 100 (higher-is-better metrics: positive = better than single-task)."""
    missing = [t for t in tasks if baseline.get(t) is None or scores.get(t) is None]
    if missing:
        raise KeyError(f'Δm%: no score or no single-task baseline for task(s) {missing}')
    zero = [t for t in tasks if baseline[t] == 0]
    if zero:
        raise ZeroDivisionError(f'Δm%: the single-task baseline of {zero} scored 0; the relative change is undefined')
    return 100.0 * sum((scores[t] - baseline[t]) / baseline[t] for t in tasks) / len(tasks)


def mean_ranks(means: Dict[str, Dict[str, float]], tasks: Sequence[str]) -> Dict[str, float]:
    """Per task, rank the methods by score (1 = best; ties share the mean of their places); average over tasks.

    ``means``: method -> task -> mean score. A method without a score of some task is not ranked."""
    methods = [m for m, s in means.items() if all(s.get(t) is not None for t in tasks)]
    ranks = {m: [] for m in methods}
    for t in tasks:
        order = sorted(methods, key=lambda m: -means[m][t])
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and means[order[j + 1]][t] == means[order[i]][t]:
                j += 1
            for m in order[i:j + 1]:
                ranks[m].append((i + j) / 2 + 1)
            i = j + 1
    return {m: sum(r) / len(r) for m, r in ranks.items() if r}


# ----------------------------------------------------------------------------- the table
def compare(summaries: Dict[Tuple[str, int], dict], methods: Sequence[str], seeds: Sequence[int],
            tasks: Sequence[str], reference: str = 'vanilla') -> dict:
    """Everything the table shows, as numbers: per method its seeds, per-task and board-A scores, per-seed
    Δm%, mean rank, and A's difference to ``reference`` with whether it exceeds the seed spread
    (the two mean ± std intervals do not overlap)."""
    baseline, base_seeds = {}, {}
    for t in tasks:
        vals = [summaries[(SINGLE + t, s)]['final'][t] for s in seeds if (SINGLE + t, s) in summaries]
        if vals:
            baseline[t], base_seeds[t] = statistics.fmean(vals), len(vals)
    rows = {}
    for m in methods:
        runs = [summaries[(m, s)] for s in seeds if (m, s) in summaries]
        row = dict(seeds=[r['seed'] for r in runs], missing=[s for s in seeds if (m, s) not in summaries],
                   scores={}, delta_m=[], spi=[r['seconds_per_iter'] for r in runs
                                               if r.get('seconds_per_iter') is not None])
        names = [single_task(m)] if is_single(m) else list(tasks)
        for t in names + ['A']:
            row['scores'][t] = [r['final'][t] for r in runs if r['final'].get(t) is not None]
        if not is_single(m) and all(t in baseline for t in tasks):
            row['delta_m'] = [delta_m(r['final'], baseline, tasks) for r in runs]
        rows[m] = row
    multi = [m for m in methods if not is_single(m)]
    means = {m: {t: statistics.fmean(rows[m]['scores'][t]) for t in tasks if rows[m]['scores'].get(t)}
             for m in multi if rows[m]['seeds']}
    ranks = mean_ranks(means, tasks)
    ref = rows.get(reference)
    for m in multi:
        rows[m]['mean_rank'] = ranks.get(m)
        a, r = rows[m]['scores']['A'], (ref or {}).get('scores', {}).get('A')
        if m != reference and a and r:
            (ma, sa), (mr, sr) = mean_std(a), mean_std(r)
            diff = ma - mr
            rows[m]['vs_reference'] = dict(diff=diff, beyond_spread=(None if sa is None or sr is None
                                                                     else abs(diff) > sa + sr))
    return dict(rows=rows, baseline=baseline, baseline_seeds=base_seeds, tasks=list(tasks), seeds=list(seeds),
                reference=reference, ranked=sorted(ranks))


def single_task(method: str) -> str:
    return method[len(SINGLE):]


def table_markdown(comp: dict, cost: Optional[Dict[str, dict]] = None) -> str:
    """The markdown table of :func:`compare`: ``—`` where a cell has no finished run."""
    tasks, seeds, ref = comp['tasks'], comp['seeds'], comp['reference']
    head = (['method', 'seeds'] + tasks + ['leaderboard A', f'A − {ref}', 'Δm% (vs single-task)', 'mean rank',
                                           'train s/iter', 'step / vanilla', 'peak tensor MB'])
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for m, row in comp['rows'].items():
        n = len(row['seeds'])
        seeds_cell = f'{n}/{len(seeds)}' + (f" (no {', '.join(map(str, row['missing']))})" if row['missing'] else '')
        cells = [m, seeds_cell]
        for t in tasks + ['A']:
            cells.append(fmt_mean_std(row['scores'].get(t) or []))
        vs = row.get('vs_reference')
        cells.append('—' if not vs else f"{vs['diff']:+.4f}" + (' *' if vs['beyond_spread'] else ''))
        cells.append(fmt_mean_std(row['delta_m'], 2, signed=True) if row['delta_m'] else
                     ('0 (reference)' if is_single(m) else '—'))
        rank = row.get('mean_rank')
        cells.append('—' if rank is None else f'{rank:.2f}')
        cells.append(f"{statistics.median(row['spi']):.3f}" if row['spi'] else '—')
        c = (cost or {}).get(m)
        cells += [f"{c['ratio_to_vanilla']:.3f}", f"{c['peak_tensor_mb']:.1f}"] if c else ['—', '—']
        lines.append('| ' + ' | '.join(cells) + ' |')
    base = ', '.join(f"{t} {comp['baseline'][t]:.4f} ({comp['baseline_seeds'][t]} seeds)" for t in comp['baseline'])
    notes = [f"mean ± std (sample, n − 1) over the seeds a row has; — : no finished run. Δm%: mean over the tasks "
             f"of (M_t − B_t) / B_t × 100 per seed, then mean ± std; positive = better than the single-task "
             f"models; B_t = mean of the single-task baseline over its seeds ({base or 'none finished'}). "
             f"Mean rank: over the {len(tasks)} tasks of the methods' mean scores, among the "
             f"{len(comp['ranked'])} multi-task rows with a finished run. A − {ref}: difference of the mean "
             f"leaderboard A; * = beyond the seed spread (|difference| > std + std of {ref}), none = within it."]
    return '\n'.join(lines) + '\n\n' + notes[0] + '\n'


def plot_bands(summaries: Dict[Tuple[str, int], dict], methods: Sequence[str], seeds: Sequence[int],
               tasks: Sequence[str], path: str) -> None:
    """Validation score over training per task and board A: the mean over seeds, a band of ± one std."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = list(tasks) + ['A']
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for i, m in enumerate(methods):
        runs = [summaries[(m, s)] for s in seeds if (m, s) in summaries]
        if not runs:
            continue
        for ax, t in zip(axes[0], panels):
            if is_single(m) and t != single_task(m):
                continue
            iters = sorted(set.intersection(*[{c['iter'] for c in r['curve'] if c.get(t) is not None} for r in runs]))
            if not iters:
                continue
            vals = [[next(c[t] for c in r['curve'] if c['iter'] == it) for r in runs] for it in iters]
            mean = [statistics.fmean(v) for v in vals]
            std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals]
            style = dict(color=f'C{i % 10}', ls=('-', '--', ':', '-.')[i // 10 % 4])
            if is_single(m):
                style = dict(color='black', ls=':')
            ax.plot(iters, mean, marker='o', ms=2.5, lw=1.2, label=f'{m} ({len(runs)})', **style)
            ax.fill_between(iters, [a - b for a, b in zip(mean, std)], [a + b for a, b in zip(mean, std)],
                            color=style['color'], alpha=0.12, lw=0)
    for ax, t in zip(axes[0], panels):
        ax.set_title('leaderboard A' if t == 'A' else t)
        ax.set_xlabel('iteration')
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel('validation score (mean ± std over seeds)')
    legend = {}  # every method once, the single-task ones from their own task's panel
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, h)
    handles, labels = list(legend.values()), list(legend)
    fig.legend(handles, labels, fontsize=7, loc='center left', bbox_to_anchor=(1.0, 0.5), title='method (seeds)')
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches='tight')
    plt.close(fig)
