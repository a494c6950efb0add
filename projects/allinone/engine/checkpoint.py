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
