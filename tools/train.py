#!/usr/bin/env python
"""Train an AllInOne model (mmdet-style CLI).

    python tools/train.py configs/allinone_demo.py [--work-dir DIR] [--amp] [--resume [CKPT]]
        [--cfg-options k=v ...] [--launcher pytorch]
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from projects.allinone.utils.cli import add_common_args, load_config  # noqa: E402


def parse_args(argv=None):
    parser = add_common_args(argparse.ArgumentParser(description='Train an AllInOne multi-task model'))
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or from the latest checkpoint of the work dir if no '
                        'path is given')
    parser.add_argument('--no-validate', action='store_true', help='skip validation during training')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    resume = osp.abspath(args.resume) if args.resume not in (None, 'auto') else args.resume
    cfg = load_config(args)

    from mmengine.runner import Runner

    import projects.allinone  # noqa: F401  (registers the project's modules)
    from projects.allinone.utils import check_data

    if args.launcher != 'none' and cfg.get('model_wrapper_cfg') is None:
        # mmengine's MMDistributedDataParallel.train_step skips the model's per-task train_step
        raise SystemExit('distributed training needs a DDP wrapper that runs AllInOneModel.train_step task '
                         'by task (set model_wrapper_cfg); the default one does not, and this version '
                         'ships none yet (issue #5). Train with --launcher none.')
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    check_data(cfg, 'train')
    if resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif resume:
        cfg.resume, cfg.load_from = True, resume
    runner = Runner.from_cfg(cfg)
    runner.train()


if __name__ == '__main__':
    main()
