"""Resume with torch >= 2.6 safe loading (``weights_only=True``) left on.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; since torch 2.6 that means safe
loading, which rejects what an mmengine checkpoint holds besides tensors: the message hub's
``HistoryBuffer``s and the numpy arrays/scalars inside them. Rather than turning safe loading off
for every file, the few classes an mmengine checkpoint is known to contain are allow-listed.

One more thing had to go: ``HistoryBuffer.__getstate__`` pickles the class-wide table of statistics
methods (``min``, ``max``, ...) into every buffer, as ``getattr(HistoryBuffer, 'min')``; loading
that would need ``builtins.getattr`` allow-listed, which opens safe loading far wider. The table is
rebuilt by ``__setstate__`` (defaults) and by whatever code registers custom statistics at import,
so it is left out of the pickled state.

For ``--resume`` without a path, :func:`find_resume_checkpoint` picks the newest checkpoint of the
work dir that is whole, passing over one cut short by a kill or a full disk (and naming it).
"""
import glob
import os.path as osp
import re
import zipfile
from typing import List, Optional, Tuple

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer


def _numpy_globals():
    out = [np.ndarray, np.dtype]
    core = getattr(np, '_core', None) or np.core
    out += [core.multiarray._reconstruct, core.multiarray.scalar]
    # numpy >= 1.25 has one dtype class per scalar type (np.dtypes.Float64DType, ...)
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    return out


def checkpoint_safe_globals():
    return [HistoryBuffer] + _numpy_globals()


def _history_buffer_state(self) -> dict:
    state = dict(self.__dict__)
    state.pop('statistics_methods', None)
    return state


def register_checkpoint_safe_globals() -> None:
    """Allow-list the non-tensor classes of mmengine checkpoints for ``torch.load``."""
    HistoryBuffer.__getstate__ = _history_buffer_state
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:  # torch < 2.4 has no safe-globals list and loads everything
        add(checkpoint_safe_globals())


# ---------------------------------------------------------------------- resume: find a whole checkpoint
def checkpoint_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be resumed from, or ``None`` when it is a whole checkpoint file.

    ``torch.save`` writes a zip archive whose directory is at the end, so a file cut short (a kill
    or a full disk while it was written) has none; ``testzip`` also checks every entry's CRC.
    Paths that are not local files (other storage backends) are not checked.
    """
    if '://' in path:
        return None
    if not osp.isfile(path):
        return 'no such file'
    size = osp.getsize(path)
    if size == 0:
        return 'empty file (0 bytes)'
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f'truncated or corrupt ({size} bytes; {type(e).__name__}: {e})'
    if bad is not None:
        return f'corrupt ({size} bytes; entry {bad} fails its CRC check)'
    return None


def _step_of(path: str) -> int:
    m = re.fullmatch(r'(?:iter|epoch)_(\d+)\.pth', osp.basename(path))
    return int(m.group(1)) if m else -1


def find_resume_checkpoint(work_dir: str) -> Tuple[Optional[str], List[Tuple[str, str]]]:
    """The newest whole checkpoint of ``work_dir`` and the broken ones passed over on the way.

    Candidates, in order: the file ``work_dir/last_checkpoint`` names (mmengine's pointer to the
    newest), then the ``iter_N.pth`` / ``epoch_N.pth`` of the work dir older than it, newest first.
    Returns ``(path or None, [(broken path, problem), ...])``. With ``max_keep_ckpts=2`` (the
    default runtime) the previous checkpoint is still there when the newest was cut short: mmengine
    deletes the oldest one *before* writing the next.
    """
    candidates = []
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip()
        if named:
            candidates.append(named)
    limit = _step_of(candidates[0]) if candidates and _step_of(candidates[0]) >= 0 else None
    found = glob.glob(osp.join(work_dir, 'iter_*.pth')) + glob.glob(osp.join(work_dir, 'epoch_*.pth'))
    found = sorted((p for p in found if _step_of(p) >= 0 and (limit is None or _step_of(p) < limit)),
                   key=_step_of, reverse=True)
    seen, broken = set(), []
    for path in candidates + found:
        key = osp.abspath(path) if '://' not in path else path
        if key in seen:
            continue
        seen.add(key)
        problem = checkpoint_problem(path)
        if problem is None:
            return path, broken
        broken.append((path, problem))
    return None, broken
