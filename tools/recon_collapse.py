#!/usr/bin/env python
"""Collapse a Recon-converted AllInOne checkpoint into one plain single-task checkpoint per task.

    python tools/recon_collapse.py CONFIG CKPT --out DIR [--tasks det seg ...] [--format allinone|native]
        [--cfg-options k=v ...]

For each task t, t's copy of every converted layer goes back under the layer's own name and the
other tasks' copies and branches are dropped. Written to DIR:

* ``--format allinone`` (default): ``t.pth`` (keys ``backbone.*``, ``tasks.t.*``) and ``t.py``, the
  config of the single-task AllInOne model (the other tasks set to ``None`` everywhere,
  ``model.recon`` and ``model.grad_split`` removed); ``tools/test.py DIR/t.py DIR/t.pth`` runs it.
* ``--format native``: ``t.pth`` with the task library's own keys and ``t.py`` holding that model's
  config (the detector / segmentor / classifier with the shared backbone as its backbone), for
  mmdet / mmseg / mmpretrain tools. Not available with a shared neck (``model.neck``).

Every written checkpoint is loaded back, strictly, into the model its config builds.
"""
import argparse
import copy
import os
import os.path as osp


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Collapse a Recon model into single-task checkpoints')
    parser.add_argument('config', help='the config the checkpoint was trained with (model.recon set)')
    parser.add_argument('checkpoint', help='the converted checkpoint')
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--tasks', nargs='+', help='tasks to export (default: all)')
    parser.add_argument('--format', choices=['allinone', 'native'], default='allinone')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config keys')
    return parser.parse_args(argv)


def single_task_config(cfg, task: str, tasks, ckpt_path: str):
    """The AllInOne config of ``task`` alone (other tasks ``None`` wherever they are keyed)."""
    cfg = copy.deepcopy(cfg)
    cfg.model.pop('recon', None)
    cfg.model.pop('grad_split', None)
    for other in tasks:
        if other == task:
            continue
        cfg.model.tasks[other] = None
        for section in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator',
                        'test_evaluator'):
            if isinstance(cfg.get(section), dict) and other in cfg[section]:
                cfg[section][other] = None
    weights = cfg.model.get('task_loss_weights')
    if weights:
        cfg.model.task_loss_weights = {k: v for k, v in weights.items() if k == task}
    cfg.load_from = ckpt_path
    cfg.resume = False
    return cfg


def native_config(cfg, task: str):
    """The task library's own model config: the task's config with the shared backbone put back."""
    from mmengine.config import Config
    if cfg.model.get('neck'):
        raise SystemExit('--format native: the model has a shared neck (model.neck); a task model has no '
                         'place for it next to its own neck. Use --format allinone.')
    model = copy.deepcopy(cfg.model.tasks[task])
    backbone = copy.deepcopy(cfg.model.backbone)
    backbone.setdefault('_scope_', cfg.get('default_scope', 'mmdet'))
    bb = model.get('backbone')
    if isinstance(bb, dict) and bb.get('in_indices') is not None:
        raise SystemExit(f'--format native: task {task} reads a subset of the backbone levels '
                         '(SharedFeatures in_indices); set the backbone out_indices instead')
    model['backbone'] = backbone
    return Config(dict(model=model, default_scope=cfg.get('default_scope', 'mmdet'),
                       custom_imports=dict(imports=['projects.allinone'], allow_failed_imports=False)))


def main(argv=None):
    args = parse_args(argv)
    config, ckpt, out = osp.abspath(args.config), osp.abspath(args.checkpoint), osp.abspath(args.out)
    import torch
    from mmengine.config import Config
    from mmengine.registry import MODELS as ROOT_MODELS
    from mmengine.registry import DefaultScope
    from mmengine.runner.checkpoint import _load_checkpoint

    import projects.allinone  # noqa: F401
    from projects.allinone.registry import MODELS
    from projects.allinone.routing.recon.collapse import collapse_state_dict
    from projects.allinone.utils.cli import REPO_ROOT

    cfg = Config.fromfile(config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if DefaultScope.get_current_instance() is None:
        DefaultScope.get_instance('recon_collapse', scope_name=cfg.get('default_scope', 'mmdet'))
    cwd = os.getcwd()
    os.chdir(REPO_ROOT)  # relative paths in configs (a search report) are relative to the repository
    try:
        model = MODELS.build(copy.deepcopy(cfg.model))
    finally:
        os.chdir(cwd)
    recon = model.routing.get('recon')
    layers = recon.layers if recon is not None else []
    if not layers:
        print(f'note: {config} converts no layer (model.recon); the checkpoints are split per task only')
    state = _load_checkpoint(ckpt, map_location='cpu')
    sd = state.get('state_dict', state)
    sd = type(sd)((k[len('module.'):] if k.startswith('module.') else k, v) for k, v in sd.items())
    model.load_state_dict(sd, strict=True)  # the checkpoint is this config's converted model
    tasks = args.tasks or model.task_names
    unknown = set(tasks) - set(model.task_names)
    if unknown:
        raise SystemExit(f'--tasks: unknown task(s) {sorted(unknown)}; the model has {model.task_names}')
    os.makedirs(out, exist_ok=True)
    meta = dict(state.get('meta') or {})
    for task in tasks:
        native = args.format == 'native'
        plain = collapse_state_dict(sd, task, layers, model.task_names, native=native)
        path = osp.join(out, f'{task}.pth')
        cfg_path = osp.join(out, f'{task}.py')
        if native:
            task_cfg = native_config(cfg, task)
            built = ROOT_MODELS.build(copy.deepcopy(task_cfg.model))
        else:
            task_cfg = single_task_config(cfg, task, model.task_names, path)
            built = MODELS.build(copy.deepcopy(task_cfg.model))
        built.load_state_dict(plain, strict=True)
        torch.save(dict(state_dict=plain, meta=dict(meta, recon_collapsed_from=ckpt, task=task,
                                                    recon_layers=list(layers), format=args.format)),
                   path)
        task_cfg.dump(cfg_path)
        print(f'{task}: {path} ({len(plain)} tensors), config {cfg_path}')


if __name__ == '__main__':
    main()
