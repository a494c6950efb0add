#!/usr/bin/env python
"""Train an AllInOne model (mmdet-style CLI).

    python tools/train.py configs/allinone_demo.py [--work-dir DIR] [--data-root DIR] [--max-iters N]
        [--auto-scale-lr] [--amp] [--resume [CKPT]] [--cfg-options k=v ...] [--launcher pytorch]

Several processes (GPUs, or CPU processes with gloo): ``tools/dist_train.sh CONFIG N [args]``.
"""
import argparse
import os.path as osp

from torch.distributed.elastic.multiprocessing.errors import record  # the error in torchrun's summary

from projects.allinone.utils.cli import add_common_args, finish_distributed, load_config, setup_distributed
from projects.allinone.utils.cli import say as _say


def parse_args(argv=None):
    parser = add_common_args(argparse.ArgumentParser(description='Train an AllInOne multi-task model'))
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or from the latest checkpoint of the work dir if no '
                        'path is given')
    parser.add_argument('--no-validate', action='store_true', help='skip validation during training')
    parser.add_argument('--max-iters', type=int, metavar='N',
                        help='train N iterations with every scheduler boundary, the validation and checkpoint '
                        'intervals scaled by N / train_cfg.max_iters')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by the batch per step (processes x per-GPU batch) over the '
                        "config's auto_scale_lr.base_batch_size (mmdet's linear scaling)")
    return parser.parse_args(argv)


def resolve_resume(resume: str, work_dir: str):
    """``--resume``: the checkpoint to load, passing over broken ones (see find_resume_checkpoint)."""
    from projects.allinone.engine.checkpoint import checkpoint_problem, find_resume_checkpoint
    if resume != 'auto':
        problem = checkpoint_problem(resume)
        if problem:
            raise SystemExit(f'--resume {resume}: cannot resume from this checkpoint: {problem}. Name an '
                             'earlier one, or give --resume without a path to take the newest whole '
                             'checkpoint of the work dir.')
        return resume
    path, broken = find_resume_checkpoint(work_dir)
    for bad, problem in broken:
        _say(f'WARNING: --resume: skipping checkpoint {bad}: {problem}')
    if broken and path is not None:
        _say(f'--resume: resuming from the previous whole checkpoint {path}')
    elif broken:
        raise SystemExit(f'--resume: no whole checkpoint in {work_dir} (broken: '
                         f"{', '.join(b for b, _ in broken)}); start without --resume")
    return path


@record
def main(argv=None):
    args = parse_args(argv)
    resume = osp.abspath(args.resume) if args.resume not in (None, 'auto') else args.resume
    cfg = load_config(args)

    from mmengine.runner import Runner

    import projects.allinone  # noqa: F401  (registers the project's modules)
    from projects.allinone.models.pretrained import check_pretrained
    from projects.allinone.utils import check_data
    from projects.allinone.utils.schedule import apply_max_iters, launcher_world_size, scale_lr_by_batch

    if args.max_iters:
        over = apply_max_iters(cfg, args.max_iters)
        _say(f"--max-iters {args.max_iters}: schedule scaled ({over['train_cfg']}, schedulers "
             f"{[(p.get('type'), p.get('begin'), p.get('end')) for p in over['param_scheduler']]})")
    elif 'train_cfg.max_iters' in (args.cfg_options or {}):
        _say('note: --cfg-options train_cfg.max_iters leaves the schedulers and intervals as configured; '
             '--max-iters N scales them with it')
    if args.auto_scale_lr:
        cfg.setdefault('auto_scale_lr', {})['enable'] = True
    if (cfg.get('auto_scale_lr') or {}).get('enable'):
        _say(scale_lr_by_batch(cfg, launcher_world_size()))
    setup_distributed(cfg)  # per-task DDP wrapper, gloo on CPU / nccl on GPU
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    check_data(cfg, 'train')
    keep = (cfg.get('default_hooks') or {}).get('checkpoint', {}).get('max_keep_ckpts', -1)
    if keep == 1:
        _say('WARNING: default_hooks.checkpoint.max_keep_ckpts=1: mmengine deletes the previous checkpoint '
             'before writing the next, so a run killed while writing leaves nothing whole to resume from; '
             'keep at least 2')
    if resume:
        cfg.resume, cfg.load_from = True, resolve_resume(resume, cfg.work_dir)
    check_pretrained(cfg, say=_say)  # the backbone's weights can be had, or stop now naming them
    runner = Runner.from_cfg(cfg)
    runner.train()
    del runner
    finish_distributed()  # a clean exit of every rank: no thread or process group left running


if __name__ == '__main__':
    main()
