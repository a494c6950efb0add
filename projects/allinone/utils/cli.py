"""What tools/train.py and tools/test.py share: config loading, paths, the AMP switch."""
import os
import os.path as osp

from mmengine.config import Config, DictAction

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def add_common_args(parser):
    parser.add_argument('config', help='config file path')
    parser.add_argument('--work-dir', help='directory for logs, checkpoints and leaderboard files')
    parser.add_argument('--amp', action='store_true', help='mixed precision (fp16 on GPU, bf16 on CPU)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. train_cfg.max_iters=100')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (pytorch = torchrun)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def load_config(args) -> Config:
    """Load ``args.config`` as the caller sees it, then run from the repository root.

    Paths given on the command line are taken relative to the caller's directory; relative data
    paths inside configs are relative to the repository root, so the tools work from anywhere.
    """
    config = osp.abspath(args.config)
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file not found: {config}')
    work_dir = osp.abspath(args.work_dir) if args.work_dir else None
    os.chdir(REPO_ROOT)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = Config.fromfile(config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    if work_dir:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join(REPO_ROOT, 'work_dirs', osp.splitext(osp.basename(config))[0])
    if args.amp:
        enable_amp(cfg)
    return cfg


def enable_amp(cfg: Config) -> None:
    wrapper = cfg.optim_wrapper
    kind = wrapper.get('type', 'OptimWrapper')
    if kind in ('MultiTaskAmpOptimWrapper', 'AmpOptimWrapper'):
        return
    wrapper.type = 'MultiTaskAmpOptimWrapper' if kind == 'MultiTaskOptimWrapper' else 'AmpOptimWrapper'
    wrapper.setdefault('loss_scale', 'dynamic')
