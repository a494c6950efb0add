"""Fail fast, naming the path, when a config's data is not where it says."""
import os.path as osp
from typing import Iterable, List, Tuple

from mmengine.config import Config

PHASES = dict(train=('train_dataloader', 'val_dataloader'), test=('test_dataloader', ))
EVALUATORS = dict(train=('val_evaluator', ), test=('test_evaluator', ))
#: evaluator keys that name a file the metric reads (mmdet's CocoMetric: ``ann_file``)
EVALUATOR_FILE_KEYS = ('ann_file', )


def _datasets(cfg) -> Iterable[dict]:
    """Every leaf dataset config under ``cfg`` (through Concat/Repeat/ClassBalanced wrappers)."""
    if isinstance(cfg, dict):
        if 'type' in cfg and ('ann_file' in cfg or 'data_prefix' in cfg or 'data_root' in cfg):
            yield cfg
        for key in ('dataset', 'datasets'):
            sub = cfg.get(key)
            for item in (sub if isinstance(sub, (list, tuple)) else [sub]):
                yield from _datasets(item)


def dataset_paths(ds: dict) -> List[Tuple[str, str]]:
    """``(description, path)`` for the data root, annotation file and image folders of ``ds``."""
    root = ds.get('data_root') or ''
    out = []
    if root:
        out.append(('data_root', root))
    ann = ds.get('ann_file')
    if ann:
        out.append(('ann_file', ann if osp.isabs(ann) else osp.join(root, ann)))
    prefix = ds.get('data_prefix')
    items = [(f'data_prefix.{k}', v) for k, v in prefix.items()] if isinstance(prefix, dict) else \
        [('data_prefix', prefix)]
    for key, val in items:
        if val:
            out.append((key, val if osp.isabs(val) else osp.join(root, val)))
    return out


def _evaluator_files(ev, where: str) -> Iterable[Tuple[str, str]]:
    """``(key, path)`` of every file an evaluator config (a metric, or a list of them) reads."""
    if isinstance(ev, (list, tuple)):
        for i, item in enumerate(ev):
            yield from _evaluator_files(item, f'{where}[{i}]')
    elif isinstance(ev, dict):
        if 'metrics' in ev:  # mmengine's Evaluator(metrics=...)
            yield from _evaluator_files(ev['metrics'], f'{where}.metrics')
        for key in EVALUATOR_FILE_KEYS:
            if ev.get(key):
                yield f'{where}.{key}', ev[key]


def missing_data(cfg: Config, phase: str = 'train') -> List[str]:
    """Every data path (datasets of the phase's loaders, files of its evaluators) that does not exist."""
    missing = []
    for section in PHASES[phase]:
        loaders = cfg.get(section)
        if not isinstance(loaders, dict):
            continue
        for task, loader in loaders.items():
            if not isinstance(loader, dict):
                continue
            for ds in _datasets(loader.get('dataset')):
                for what, path in dataset_paths(ds):
                    if not osp.exists(path):
                        missing.append(f'{section}.{task}.dataset.{what}: {path}')
    for section in EVALUATORS[phase]:
        evaluators = cfg.get(section)
        if not isinstance(evaluators, dict):
            continue
        for task, ev in evaluators.items():
            for where, path in _evaluator_files(ev, f'{section}.{task}'):
                if not osp.exists(path):
                    missing.append(f'{where}: {path}')
    return missing


def check_data(cfg: Config, phase: str = 'train') -> None:
    """Stop, naming every missing path and how to point the config at the data, before any model is built."""
    missing = missing_data(cfg, phase)
    if missing:
        lines = '\n  '.join(missing)
        root = cfg.get('data_root')
        where = (f"Paths derive from the config's data_root {root!r}: point them all at your copy with "
                 '`--data-root DIR` (or `--cfg-options data_root=DIR`), DIR holding the layout of docs/challenge.md '
                 '"Real challenge data" (cls/ dec/ seg/), or put the data there.' if root else
                 'Lay out the data as docs/challenge.md ("Real challenge data") describes and set these paths.')
        raise FileNotFoundError(
            f'the data this config reads is not there:\n  {lines}\n{where} '
            'To try the tools without the challenge data, train on the embedded demo data: `make demo` '
            '(or `python tools/make_demo_data.py && python tools/train.py configs/allinone_demo.py`).')
