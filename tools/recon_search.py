#!/usr/bin/env python
"""Recon's layer search: joint training for a while, then the shared layers ranked by task conflict.

    python tools/recon_search.py CONFIG [--iters N] [--out DIR] [--threshold S] [--score raw|normalized]
        [--top K] [--bin-width W] [--keep-method] [--work-dir DIR] [--cfg-options k=v ...]
    python tools/recon_search.py --from-report REPORT [--threshold S] [--score ...] [--top K] [--out DIR]
        [--top-k K | --param-budget F]

The first form trains CONFIG for N iterations (default: a quarter of its schedule, the paper's
20-33%) with plain joint training (``SumAggregator``; ``--keep-method`` keeps the config's),
records per shared layer and task pair the histogram of gradient cosines (``ReconSearchHook``),
and writes ``OUT/recon_report.json`` (every layer's histograms, so any threshold S can be chosen
afterwards, ranked at ``--threshold``) and ``OUT/recon_top_layers.png``. Its last checkpoint
(``WORK_DIR/iter_N.pth``) is the search checkpoint the converted model can start from
(``load_from``). Validation is skipped; ``model.recon`` and ``model.grad_split`` are dropped for
the search (it scores the shared network).

The second form re-ranks a report at another S / score (no training), rewrites the plot in
``--out`` if given, and with ``--top-k`` / ``--param-budget`` prints the layers
``model.recon=dict(report=..., ...)`` would convert.
"""
import argparse
import os
import os.path as osp
import sys


def parse_args(argv=None):
    from projects.allinone.utils.cli import add_common_args
    argv = list(sys.argv[1:] if argv is None else argv)
    if '--from-report' in argv:
        parser = argparse.ArgumentParser(description='Re-rank a Recon search report')
        parser.add_argument('--from-report', required=True, help='recon_report.json of a search')
        parser.add_argument('--top-k', type=int, help='print the K layers a config would convert')
        parser.add_argument('--param-budget', type=float,
                            help='print the layers whose copies fit this fraction of the shared parameters')
    else:
        parser = add_common_args(argparse.ArgumentParser(description='Recon layer search'))
        parser.add_argument('--iters', type=int, help='search iterations (default: 1/4 of the schedule)')
        parser.add_argument('--bin-width', type=float, default=0.01, help='cosine histogram bin width')
        parser.add_argument('--keep-method', action='store_true',
                            help="keep the config's aggregator instead of plain joint training")
    parser.add_argument('--out', help='report directory (default: WORK_DIR/recon_search)')
    parser.add_argument('--threshold', type=float, default=None,
                        help='S: a cosine below S is a conflict (default 0, or the report\'s)')
    parser.add_argument('--score', choices=['raw', 'normalized'], default=None,
                        help='ranking: raw conflict count (the paper) or the size-normalised score')
    parser.add_argument('--top', type=int, default=20, help='layers in the table and the plot')
    return parser.parse_args(argv)


def rerank(args) -> None:
    from projects.allinone.routing.recon.report import format_ranking, load_report, plot_top_layers, select_layers
    report = load_report(args.from_report)
    score = args.score or report.get('score', 'raw')
    print(format_ranking(report, args.top, args.threshold, score))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        png = osp.join(args.out, 'recon_top_layers.png')
        plot_top_layers(report, png, top=args.top, score=score, threshold=args.threshold)
        print(f'plot: {png}')
    if args.top_k is not None or args.param_budget is not None:
        names = select_layers(report, top_k=args.top_k, param_budget=args.param_budget, score=score,
                              threshold=args.threshold)
        n = sum(lay['numel'] for lay in report['layers'] if lay['name'] in names)
        extra = (len(report['tasks']) - 1) * n
        print(f'{len(names)} layers, {n:,} parameters; their copies add {extra:,} '
              f"({100.0 * extra / report['shared_params']:.2f}% of the shared parameters):")
        print('recon=dict(layers=[' + ', '.join(repr(x) for x in names) + '])')


def main(argv=None):
    args = parse_args(argv)
    if getattr(args, 'from_report', None):
        return rerank(args)
    out = osp.abspath(args.out) if args.out else None
    from projects.allinone.utils.cli import load_config, setup_distributed
    cfg = load_config(args)

    from mmengine.logging import print_log
    from mmengine.runner import Runner

    import projects.allinone  # noqa: F401
    from projects.allinone.utils import check_data

    if not args.work_dir:
        cfg.work_dir = cfg.work_dir.rstrip('/') + '_recon_search'
    iters = args.iters or max(1, int(cfg.train_cfg.max_iters) // 4)
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters + 1
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    notes = []
    for key in ('recon', 'grad_split'):
        if cfg.model.get(key):
            cfg.model[key] = None
            notes.append(f'model.{key} dropped for the search')
    if not args.keep_method:
        agg = cfg.optim_wrapper.get('aggregator', dict(type='SumAggregator'))
        if agg.get('type') != 'SumAggregator':
            notes.append(f"aggregator {agg.get('type')} replaced by SumAggregator (plain joint training)")
        cfg.optim_wrapper.aggregator = dict(type='SumAggregator')
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=iters, by_epoch=False, max_keep_ckpts=1)
    hooks = list(cfg.get('custom_hooks') or [])
    hooks = [h for h in hooks if h.get('type') != 'ReconSearchHook']
    hooks.append(dict(type='ReconSearchHook', out_dir=out, bin_width=args.bin_width,
                      threshold=0.0 if args.threshold is None else args.threshold,
                      score=args.score or 'raw', top=args.top))
    hooks.append(dict(type='ProgressBarHook'))  # a bar over the search's iterations
    cfg.custom_hooks = hooks
    setup_distributed(cfg)
    check_data(cfg, 'train')
    runner = Runner.from_cfg(cfg)
    for note in notes:
        print_log(f'recon search: {note}', logger='current')
    runner.train()
    hook = next(h for h in runner.hooks if type(h).__name__ == 'ReconSearchHook')
    if hook.report_path:
        print(f'report: {hook.report_path}\nsearch checkpoint: {osp.join(cfg.work_dir, f"iter_{iters}.pth")}')


if __name__ == '__main__':
    main()
