"""Fail fast, naming the path, when a config's data is not where it says."""
import os.path as osp
from typing import Iterable, List, Tuple

from mmengine.config import Config

PHASES = dict(train=('train_dataloader', 'val_dataloader'), test=('test_dataloader', ))


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
    items = prefix.items() if isinstance(prefix, dict) else ([('data_prefix', prefix)] if prefix else [])
    for key, val in items:
        if val:
            out.append((f'data_prefix.{key}', val if osp.isabs(val) else osp.join(root, val)))
    return out


def missing_data(cfg: Config, phase: str = 'train') -> List[str]:
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
    return missing


def check_data(cfg: Config, phase: str = 'train') -> None:
    missing = missing_data(cfg, phase)
    if missing:
        lines = '\n  '.join(missing)
        raise FileNotFoundError(
            f'the data this config reads is not there:\n  {lines}\n'
            'Lay out the challenge data as README.md ("Real challenge data") describes and set the '
            "config's data_root, or train on the embedded demo data: `make demo` "
            '(or `python tools/make_demo_data.py && python tools/train.py configs/allinone_demo.py`).')
