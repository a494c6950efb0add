"""Another schedule length for a config: every iteration boundary scaled with ``max_iters``.

``--cfg-options train_cfg.max_iters=N`` changes where training stops and nothing else: the
52,500-iteration competition config stopped after 100 iterations is still in its 200-iteration
warm-up, and after 5,000 its cosine has hardly decayed. :func:`scale_schedule` moves every
iteration-based boundary of the parameter schedulers (``begin``, ``end``, ``milestones``, ``T_max``,
``step_size``, ``total_steps``) and the validation / checkpoint intervals by ``max_iters / train_cfg.max_iters``.
``tools/train.py --max-iters`` and ``tools/compare_methods.py --max-iters`` both use it.
"""
import copy
from typing import List, Optional

#: keys of a parameter scheduler that count iterations when ``by_epoch=False``
SCHEDULER_ITER_KEYS = ('begin', 'end', 'T_max', 'step_size', 'total_steps')


def scale_schedulers(schedulers, factor: float) -> List[dict]:
    """Copies of iteration-based scheduler configs with every boundary multiplied by ``factor``.

    Boundaries are rounded; an ``end`` stays at least one iteration after its ``begin`` (a
    scheduler shrunk to nothing would be dropped by mmengine, or divide by zero), milestones stay
    strictly increasing where the room allows. Epoch-based schedulers (``by_epoch`` True, mmengine's
    default) are returned unchanged: their unit is not the iteration.
    """
    if isinstance(schedulers, dict):
        schedulers = [schedulers]
    out = []
    for sch in schedulers or []:
        sch = copy.deepcopy(dict(sch))
        if sch.get('by_epoch', True):
            out.append(sch)
            continue
        for key in SCHEDULER_ITER_KEYS:
            if isinstance(sch.get(key), (int, float)) and not isinstance(sch.get(key), bool):
                floor = 0 if key == 'begin' else 1
                sch[key] = max(floor, int(round(sch[key] * factor)))
        if 'begin' in sch and 'end' in sch and sch['end'] <= sch['begin']:
            sch['end'] = sch['begin'] + 1
        if isinstance(sch.get('milestones'), (list, tuple)):
            scaled, last = [], 0
            for m in sch['milestones']:
                last = max(last + 1, int(round(m * factor)))
                scaled.append(last)
            sch['milestones'] = scaled
        out.append(sch)
    return out


def scale_schedule(cfg, max_iters: int, schedulers: Optional[list] = None) -> dict:
    """Config overrides that run ``cfg``'s schedule in ``max_iters`` iterations.

    Returns ``dict(train_cfg=..., param_scheduler=[...], default_hooks=...)`` to merge into the
    config (or into a child config that inherits it): ``train_cfg.max_iters``, its ``val_interval``
    (and ``val_begin``) and the checkpoint ``interval`` scaled (at least 1, at most ``max_iters``),
    and every scheduler boundary (:func:`scale_schedulers`). ``schedulers`` replaces the config's
    ``param_scheduler`` as the list to scale (a child config's own).
    """
    max_iters = int(max_iters)
    if max_iters <= 0:
        raise ValueError(f'max_iters must be a positive integer, got {max_iters}')
    train_cfg = cfg.get('train_cfg') or {}
    old = train_cfg.get('max_iters')
    if not old:
        raise KeyError('scaling the schedule needs train_cfg.max_iters in the config (an iteration-based loop)')
    factor = max_iters / old

    def scaled(n):
        return min(max_iters, max(1, int(round(n * factor))))

    new_train = dict(max_iters=max_iters)
    for key in ('val_interval', 'val_begin'):
        if isinstance(train_cfg.get(key), int):
            new_train[key] = scaled(train_cfg[key])
    over = dict(train_cfg=new_train,
                param_scheduler=scale_schedulers(cfg.get('param_scheduler') if schedulers is None else schedulers,
                                                 factor))
    checkpoint = ((cfg.get('default_hooks') or {}).get('checkpoint') or {})
    if isinstance(checkpoint.get('interval'), int) and checkpoint['interval'] > 0:
        over['default_hooks'] = dict(checkpoint=dict(interval=scaled(checkpoint['interval'])))
    return over


def apply_max_iters(cfg, max_iters: int) -> dict:
    """Merge :func:`scale_schedule` into ``cfg`` in place; returns the overrides applied."""
    over = scale_schedule(cfg, max_iters)
    cfg.merge_from_dict({k: v for k, v in over.items() if k != 'param_scheduler'})
    cfg.param_scheduler = over['param_scheduler']
    return over


def launcher_world_size() -> int:
    """Processes of this job as the launcher announces them (torchrun, slurm, mpi), before any
    process group exists; 1 without a launcher."""
    import os
    for var in ('WORLD_SIZE', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
        if os.environ.get(var, '').isdigit():
            return int(os.environ[var])
    return 1


def scale_lr_by_batch(cfg, world_size: int) -> str:
    """mmdet's ``auto_scale_lr`` for per-task loaders: ``optim_wrapper.optimizer.lr`` times the batch
    of a step over ``auto_scale_lr.base_batch_size`` (linear scaling). Returns what was done.

    ``base_batch_size`` is the batch the config's lr is set for: ``{task: images per step}`` (each
    task's ratio is GPUs x per-GPU batch x ``accumulative_counts`` over its base; the lr is scaled
    by the mean ratio, which is every task's ratio when only the number of GPUs changed), or one
    number for the images of all tasks together. mmengine's own ``Runner.scale_lr`` reads one
    ``train_dataloader.batch_size`` and cannot read per-task loaders, so it is switched off here
    (``auto_scale_lr.enable=False``) once the lr is scaled.
    """
    asl = cfg.get('auto_scale_lr') or {}
    base = asl.get('base_batch_size')
    if not base:
        raise KeyError('--auto-scale-lr: the config has no auto_scale_lr=dict(base_batch_size=...) saying which '
                       'batch its learning rate is set for (configs/_base_/datasets/track1.py has one)')
    loaders = {t: v for t, v in (cfg.get('train_dataloader') or {}).items() if v is not None}
    accumulate = (cfg.get('optim_wrapper') or {}).get('accumulative_counts', 1) or 1
    batch = {t: world_size * int(v['batch_size']) * accumulate for t, v in loaders.items()}
    if isinstance(base, dict):
        missing = [t for t in batch if t not in base]
        if missing:
            raise KeyError(f'auto_scale_lr.base_batch_size has no entry for task(s) {missing} (it has {list(base)})')
        ratios = {t: batch[t] / base[t] for t in batch}
    else:
        ratios = {'+'.join(batch): sum(batch.values()) / base}
    factor = sum(ratios.values()) / len(ratios)
    optimizer = cfg.optim_wrapper.optimizer
    old = optimizer.lr
    optimizer.lr = old * factor
    cfg.auto_scale_lr.enable = False  # done; mmengine's Runner.scale_lr would read a single loader
    shown = ', '.join(f'{t} {batch[t] if t in batch else sum(batch.values())}/'
                      f'{base[t] if isinstance(base, dict) else base}' for t in ratios)
    return (f'auto_scale_lr: batch per step / base ({shown}; {world_size} process(es) x per-GPU batch x '
            f'accumulative_counts {accumulate}): lr {old:g} x {factor:g} = {optimizer.lr:g}')
