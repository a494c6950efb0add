"""Resume with torch >= 2.6 safe loading (``weights_only=True``) left on.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; since torch 2.6 that means safe
loading, which rejects what an mmengine checkpoint holds besides tensors: the message hub's
``HistoryBuffer``s and the numpy arrays/scalars inside them. Rather than turning safe loading off
for every file, the few classes an mmengine checkpoint is known to contain are allow-listed.
"""
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


def register_checkpoint_safe_globals() -> None:
    """Allow-list the non-tensor classes of mmengine checkpoints for ``torch.load``."""
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:  # torch < 2.4 has no safe-globals list and loads everything
        add(checkpoint_safe_globals())
