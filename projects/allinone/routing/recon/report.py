"""A Recon search report: written by the search (:mod:`.search_hook`, ``tools/recon_search.py``) and
read to choose the layers (:class:`~.layers.Recon`), in one place.

:func:`rank_layers` / :func:`select_layers` read it: the conflict count below any threshold S (from
the stored cosine histograms), a raw and a size-normalised score, and the selection by count
(``top_k``) or by parameter budget; :func:`write_report` writes it with its bar plot.
"""
import json
import math
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

SCORES = ('raw', 'normalized')


def chance_below(threshold: float, numel: int) -> float:
    """P(cos < threshold) for two independent uniformly random directions in ``numel`` dimensions:
    what pure noise would give a layer of that size (``(1 + cos) / 2 ~ Beta((d-1)/2, (d-1)/2)``)."""
    if threshold <= -1:
        return 0.0
    if threshold > 1:
        return 1.0
    if numel <= 1:
        return 0.5 if threshold <= 1 else 1.0
    a = (numel - 1) / 2.0
    x = (1.0 + threshold) / 2.0
    try:
        from scipy.special import betainc
        return float(betainc(a, a, x))
    except ImportError:  # the normal approximation, cos ~ N(0, 1 / d)
        return 0.5 * (1.0 + math.erf(threshold * math.sqrt(numel) / math.sqrt(2.0)))


def load_report(report) -> dict:
    if isinstance(report, dict):
        return report
    if not osp.isfile(report):
        raise FileNotFoundError(f'recon: no search report {report!r} (tools/recon_search.py writes it)')
    with open(report) as f:
        return json.load(f)


def cosine_quantiles(report, quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95)) -> Dict[float, float]:
    """Quantiles of every recorded cosine of the report (all layers and task pairs pooled), read from
    the histograms (each bin's lower edge): where the cosines of this model and data actually lie, to
    choose S by (e.g. the 5% quantile: S then catches about the lowest 5% of all observations).

    With one batch per task (AllInOne) the task gradients also differ by their batches' sampling
    noise, so the cosines sit nearer 0 than in a search where every task sees the same images (the
    official code): a paper's S (-0.02 on NYUv2, -0.1 on Multi-MNIST) may fall in a different part
    of this distribution."""
    report = load_report(report)
    width = float(report['bin_width'])
    total = None
    for layer in report['layers']:
        for h in layer['hist']:
            total = list(h) if total is None else [a + b for a, b in zip(total, h)]
    n = sum(total or [])
    if not n:
        raise ValueError('recon: the report holds no cosine')
    out = {}
    for q in quantiles:
        acc, k = 0, 0
        for k, c in enumerate(total):
            acc += c
            if acc >= q * n:
                break
        out[float(q)] = round(-1.0 + k * width, 10)
    return out


def rank_layers(report, threshold: Optional[float] = None, score: str = 'raw') -> List[dict]:
    """The report's layers scored at ``threshold`` (default: the report's) and ranked by ``score``.

    Per layer: ``conflicts`` (number of (iteration, task pair) cosines below S, summed over the
    pairs: the paper's score, ``raw``), ``observations``, ``conflict_fraction``, ``chance`` (the
    fraction random directions of the layer's size fall below S) and ``normalized``
    (``conflict_fraction - chance``: the conflicts a layer shows beyond what its size alone
    explains; the raw count rewards small layers, whose cosines are noisier, for S < 0). S is taken
    on the histogram's grid (multiples of the bin width, 0.01 by default).
    """
    if score not in SCORES:
        raise ValueError(f'recon: score must be one of {SCORES}, got {score!r}')
    report = load_report(report)
    width = float(report['bin_width'])
    nbins = int(report['bins'])
    S = float(report.get('threshold', 0.0) if threshold is None else threshold)
    k = min(max(int(round((S + 1.0) / width)), 0), nbins)
    S_grid = round(-1.0 + k * width, 10)
    out = []
    for order, layer in enumerate(report['layers']):
        hist = layer['hist']
        conflicts = sum(sum(h[:k]) for h in hist)
        obs = sum(sum(h) for h in hist)
        frac = conflicts / obs if obs else 0.0
        chance = chance_below(S_grid, int(layer['numel']))
        row = {key: v for key, v in layer.items() if key != 'hist'}
        row.update(conflicts=int(conflicts), observations=int(obs), conflict_fraction=frac, chance=chance,
                   normalized=(frac - chance) if obs else 0.0, threshold=S_grid, _order=order)
        out.append(row)
    key = (lambda r: (-r['conflicts'], -r['normalized'], r['_order'])) if score == 'raw' else \
        (lambda r: (-r['normalized'], -r['conflicts'], r['_order']))
    out.sort(key=key)
    for rank, row in enumerate(out, 1):
        row.pop('_order')
        row['rank'] = rank
    return out


def select_layers(report, top_k: Optional[int] = None, param_budget: Optional[float] = None,
                  score: str = 'raw', threshold: Optional[float] = None,
                  num_tasks: Optional[int] = None) -> List[str]:
    """Layer names to convert: the ``top_k`` best, or the best whose copies fit ``param_budget``.

    Only layers with a positive score and that can be copied (:func:`is_convertible`) are taken.
    ``param_budget`` is a fraction of the report's shared parameter count; a layer costs
    ``(T - 1) * numel`` extra parameters; layers are taken in rank order, passing over one that no
    longer fits.
    """
    if (top_k is None) == (param_budget is None):
        raise ValueError('recon: give exactly one of top_k and param_budget with a report')
    report = load_report(report)
    ranked = [r for r in rank_layers(report, threshold, score)
              if r.get('convertible', True) and (r['conflicts'] if score == 'raw' else r['normalized']) > 0]
    if top_k is not None:
        if int(top_k) < 0:
            raise ValueError(f'recon: top_k must be >= 0, got {top_k}')
        return [r['name'] for r in ranked[:int(top_k)]]
    T = int(num_tasks or len(report['tasks']))
    budget = float(param_budget) * float(report['shared_params'])
    chosen, used = [], 0
    for r in ranked:
        cost = (T - 1) * int(r['numel'])
        if used + cost <= budget:
            chosen.append(r['name'])
            used += cost
    return chosen


def write_report(report: dict, out_dir: str, top: int = 20, score: Optional[str] = None) -> Tuple[str, str]:
    """``recon_report.json`` and ``recon_top_layers.png`` (the ``top`` layers' raw and normalised
    scores at the report's threshold) in ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    path = osp.join(out_dir, 'recon_report.json')
    with open(path, 'w') as f:
        json.dump(report, f, indent=1)
    png = osp.join(out_dir, 'recon_top_layers.png')
    plot_top_layers(report, png, top=top, score=score or report.get('score', 'raw'))
    return path, png


def plot_top_layers(report: dict, path: str, top: int = 20, score: str = 'raw',
                    threshold: Optional[float] = None) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    ranked = rank_layers(report, threshold, score)[:top]
    S = ranked[0]['threshold'] if ranked else report.get('threshold', 0.0)
    labels = [f"{r['name']} ({r['type']}, {r['numel']:,})" for r in ranked][::-1]
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.35 * max(len(ranked), 4) + 1.5), sharey=True)
    axes[0].barh(labels, [r['conflicts'] for r in ranked][::-1], color='tab:red')
    axes[0].set_xlabel(f'conflicts: cosines < {S:g} (summed over {len(report["pairs"])} task pairs)')
    axes[1].barh(labels, [r['normalized'] for r in ranked][::-1], color='tab:blue')
    axes[1].set_xlabel('normalized: conflict fraction - chance at the layer size')
    fig.suptitle(f'Recon search: top {len(ranked)} shared layers by {score} score '
                 f'({report["iterations"]} iterations, tasks {", ".join(report["tasks"])})')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_ranking(report: dict, top: int = 20, threshold: Optional[float] = None,
                   score: Optional[str] = None) -> str:
    """The top layers as a markdown table."""
    score = score or report.get('score', 'raw')
    ranked = rank_layers(report, threshold, score)
    S = ranked[0]['threshold'] if ranked else (threshold if threshold is not None else report.get('threshold', 0.0))
    ranked = ranked[:max(0, top)]
    lines = [f'| rank | layer | type | params | conflicts (cos < {S:g}) | fraction | chance | normalized |',
             '|---:|---|---|---:|---:|---:|---:|---:|']
    for r in ranked:
        lines.append(f"| {r['rank']} | {r['name']} | {r['type']} | {r['numel']:,} | {r['conflicts']} / "
                     f"{r['observations']} | {r['conflict_fraction']:.3f} | {r['chance']:.3f} | "
                     f"{r['normalized']:+.3f} |")
    return '\n'.join(lines)


def format_cosine_quantiles(report: dict) -> str:
    """One line: where the recorded cosines lie (all layers and pairs), to choose S by."""
    qs = cosine_quantiles(report)
    spread = ', '.join(f'{int(q * 100)}%: {v:+.2f}' for q, v in qs.items())
    return (f'cosines recorded (all layers and task pairs): {spread}; a layer of pure noise has a fraction '
            '`chance` below S (1/2 at S = 0)')
