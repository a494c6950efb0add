"""Point a config at another data root with one switch.

A config derives its paths from ``data_root`` while it is parsed (``data_root + 'dec/'`` in each
dataset, ``data_root + 'dec/val.json'`` in the detection evaluator), so setting ``data_root``
afterwards (``--cfg-options data_root=DIR``) reaches none of them. :func:`set_data_root` re-roots
every path of the loaders and evaluators that starts with the config's ``data_root``; paths given
some other way (another variable, an absolute path) are left as they are.
"""
import os.path as osp
from typing import List, Optional

#: the config sections whose paths follow ``data_root``
DATA_SECTIONS = ('train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator', 'test_evaluator')


def _norm(root: str) -> str:
    return osp.normpath(str(root)) if root not in (None, '') else ''


def set_data_root(cfg, new_root: str, old_root: Optional[str] = None, option: str = '--data-root') -> List[str]:
    """Replace the prefix ``old_root`` (default: ``cfg.data_root``) by ``new_root`` in every string of
    :data:`DATA_SECTIONS`, and set ``cfg.data_root``. Returns the re-rooted keys.

    Raises if the config has no ``data_root`` or if none of its data paths derives from it (the
    switch would do nothing, which is the mistake it exists to prevent).
    """
    old = _norm(cfg.get('data_root') if old_root is None else old_root)
    if not old or old == '.':
        raise KeyError(f'{option}: the config has no data_root to replace; set the data paths of its '
                       f'{", ".join(DATA_SECTIONS)} instead')
    new = _norm(new_root)
    changed = []

    def walk(obj, where):
        if isinstance(obj, dict):
            for key in list(obj.keys()):
                obj[key] = walk(obj[key], f'{where}.{key}')
            return obj
        if isinstance(obj, (list, tuple)):
            return type(obj)(walk(v, f'{where}[{i}]') for i, v in enumerate(obj))
        if isinstance(obj, str) and (_norm(obj) == old or obj.startswith(old + '/')):
            changed.append(where)
            return new + obj[len(old):]
        return obj

    for section in DATA_SECTIONS:
        if cfg.get(section) is not None:
            cfg[section] = walk(cfg[section], section)
    if not changed:
        raise ValueError(f"{option} {new_root}: no dataset or evaluator path of this config starts with its "
                         f"data_root {cfg.get('data_root')!r}, so nothing would change; set the data paths of "
                         f"its {', '.join(DATA_SECTIONS)} directly")
    cfg.data_root = new + '/'
    return changed
