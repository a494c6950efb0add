#!/usr/bin/env python
"""Evaluate an AllInOne checkpoint on every task and print the leaderboard table.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options k=v ...]
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from projects.allinone.utils.cli import add_common_args, load_config  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test an AllInOne multi-task model')
    parser = add_common_args(parser)
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--submit', metavar='OUT.json',
                        help='also write the challenge submission file (cls / dec / seg)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    checkpoint = osp.abspath(args.checkpoint)
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    submit = osp.abspath(args.submit) if args.submit else None
    cfg = load_config(args)

    from mmengine.runner import Runner

    import projects.allinone  # noqa: F401
    from projects.allinone.utils import check_data

    check_data(cfg, 'test')
    cfg.load_from = checkpoint
    if args.submit:
        cfg.test_cfg.setdefault('submission', {})
        cfg.test_cfg.submission.out = submit
    runner = Runner.from_cfg(cfg)
    return runner.test()


if __name__ == '__main__':
    main()
