"""What tools/train.py and tools/test.py share: config loading, paths, the AMP switch."""
import os
import os.path as osp
import sys

from mmengine.config import Config, DictAction

from .data_root import set_data_root
from .dropped_tasks import adapt_to_dropped_tasks

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def add_common_args(parser):
    parser.add_argument('config', help='config file path')
    parser.add_argument('--work-dir', help='directory for logs, checkpoints and leaderboard files')
    parser.add_argument('--amp', action='store_true', help='mixed precision (fp16 on GPU, bf16 on CPU)')
    parser.add_argument('--data-root', metavar='DIR',
                        help="replace the config's data_root in every dataset and evaluator path derived from it "
                        '(= --cfg-options data_root=DIR)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. default_hooks.checkpoint.interval=100')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher (pytorch = torchrun)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def load_config(args) -> Config:
    """Load ``args.config`` as the caller sees it, then run from the repository root.

    Paths given on the command line are taken relative to the caller's directory; relative data
    paths inside configs are relative to the repository root, so the tools work from anywhere.
    ``--data-root DIR`` (or ``--cfg-options data_root=DIR``, relative to the repository root)
    re-roots every dataset and evaluator path derived from the config's ``data_root`` before the
    other options apply; boards and ``save_best`` follow the tasks the config drops.
    """
    config = osp.abspath(args.config)
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file not found: {config}')
    work_dir = osp.abspath(args.work_dir) if args.work_dir else None
    data_root = osp.abspath(args.data_root) if getattr(args, 'data_root', None) else None
    os.chdir(REPO_ROOT)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    cfg = Config.fromfile(config)
    options = dict(args.cfg_options or {})
    if 'data_root' in options:  # re-root first, so that explicit path options below win
        option_root = options.pop('data_root')
        if data_root and osp.abspath(option_root) != data_root:
            raise ValueError(f'--data-root {args.data_root} and --cfg-options data_root={option_root} disagree')
        data_root = data_root or option_root
    if data_root:
        set_data_root(cfg, data_root, option='--data-root' if args.data_root else '--cfg-options data_root=...')
    if options:
        cfg.merge_from_dict(options)
    for message in adapt_to_dropped_tasks(cfg):
        say(message)
    cfg.launcher = args.launcher
    if work_dir:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join(REPO_ROOT, 'work_dirs', osp.splitext(osp.basename(config))[0])
    if args.amp:
        enable_amp(cfg)
    return cfg


def say(msg: str) -> None:
    """A message before the Runner's logger exists, once per job (rank 0)."""
    if os.environ.get('RANK', '0') == '0':
        print(msg, file=sys.stderr, flush=True)


def enable_amp(cfg: Config) -> None:
    """``--amp``: fp16 autocast with dynamic loss scaling on a GPU, bf16 without scaling on CPU.

    bf16 has fp32's exponent range, so gradients do not underflow and a loss scale buys nothing; CPU
    autocast has no fp16 kernels worth using. A wrapper the config already makes AMP is kept.
    """
    import torch
    wrapper = cfg.optim_wrapper
    kind = wrapper.get('type', 'OptimWrapper')
    if kind in ('MultiTaskAmpOptimWrapper', 'AmpOptimWrapper'):
        return
    if kind != 'MultiTaskOptimWrapper':  # mmengine's own AmpOptimWrapper (GPU only)
        wrapper.type = 'AmpOptimWrapper'
        wrapper.setdefault('loss_scale', 'dynamic')
        return
    wrapper.type = 'MultiTaskAmpOptimWrapper'
    if torch.cuda.is_available():
        wrapper.setdefault('dtype', 'float16')
        wrapper.setdefault('loss_scale', 'dynamic')
    else:
        wrapper.setdefault('dtype', 'bfloat16')
        wrapper.setdefault('loss_scale', dict(enabled=False))


DDP_WRAPPER = 'MultiTaskDistributedDataParallel'


def setup_distributed(cfg: Config) -> None:
    """Under a launcher: the per-task DDP wrapper, the backend by device, the process group on CPU.

    * ``model_wrapper_cfg`` defaults to :class:`MultiTaskDistributedDataParallel` (exact mode); a
      config asking for mmengine's ``MMDistributedDataParallel`` with a per-task optim wrapper is
      refused: that wrapper sums the task losses and never runs the model's per-task step.
    * ``env_cfg.dist_cfg.backend``: ``nccl`` with GPUs, ``gloo`` without (a config's ``nccl``
      is switched to ``gloo`` on a CPU-only machine).
    * On CPU the process group is started here: mmengine's ``init_dist`` calls
      ``torch.cuda.set_device`` whatever the backend, which fails without a GPU. The Runner then
      finds it initialised and uses it.
    """
    if cfg.get('launcher', 'none') == 'none':
        return
    import torch
    wrapper = cfg.get('model_wrapper_cfg')
    optim_type = str((cfg.get('optim_wrapper') or {}).get('type', ''))
    per_task = 'MultiTask' in optim_type
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(type=DDP_WRAPPER, mode='exact')
    elif per_task and wrapper.get('type', 'MMDistributedDataParallel') in (
            'MMDistributedDataParallel', 'DistributedDataParallel'):
        raise SystemExit(f"model_wrapper_cfg={dict(wrapper)} cannot train with {optim_type}: "
                         "mmengine's DDP wrappers sum the task losses and skip AllInOneModel.train_step. Use "
                         f"model_wrapper_cfg=dict(type='{DDP_WRAPPER}', mode='exact' or 'approximate').")
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    cuda = torch.cuda.is_available()
    if not cuda and dist_cfg.get('backend', 'nccl') == 'nccl':
        dist_cfg['backend'] = 'gloo'
    dist_cfg.setdefault('backend', 'nccl' if cuda else 'gloo')
    if cfg.launcher != 'pytorch':
        return
    exit_with_launcher()
    if cuda:
        return
    import datetime

    import torch.distributed as dist
    if not dist.is_initialized():
        kwargs = {k: v for k, v in dist_cfg.items() if k != 'backend'}
        if 'timeout' in kwargs:
            kwargs['timeout'] = datetime.timedelta(seconds=kwargs['timeout'])
        dist.init_process_group(backend=dist_cfg['backend'], **kwargs)


def exit_with_launcher(poll_s: float = 1.0) -> None:
    """Under torchrun, end this worker when its launcher is gone.

    torchrun starts each worker in a session of its own, so ``kill -9`` of torchrun (or of its
    process group) leaves the workers running on: still training, still writing checkpoints into
    the work dir a restarted job resumes from. A daemon thread notices the worker was re-parented
    and exits the process.
    """
    import sys
    import threading
    import time
    if 'TORCHELASTIC_RUN_ID' not in os.environ:
        return
    parent = os.getppid()
    if parent <= 1:
        return

    def watch():
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                sys.stderr.write(f"rank {os.environ.get('RANK', '?')}: launcher (pid {parent}) is gone; "
                                 'exiting\n')
                sys.stderr.flush()
                os._exit(1)

    threading.Thread(target=watch, name='exit-with-launcher', daemon=True).start()
