"""A converted Recon checkpoint back into plain single-task ones (``tools/recon_collapse.py``)."""
from collections import OrderedDict
from typing import Dict, Sequence


def collapse_state_dict(state_dict: Dict, task: str, layer_names: Sequence[str],
                        tasks: Sequence[str], native: bool = False) -> 'OrderedDict':
    """A plain single-task state dict from a converted AllInOne one.

    ``task``'s copy of each converted layer goes back to the layer's own name, the other tasks'
    copies and branches are dropped. ``native=False``: AllInOne keys (``backbone.*``,
    ``tasks.<task>.*``); ``native=True``: the task library's own model (``backbone.*`` and the
    task's keys without ``tasks.<task>.``), i.e. the detector / segmentor / classifier with the
    shared backbone as its backbone.
    """
    out = OrderedDict()
    layers = sorted(layer_names, key=len, reverse=True)
    for key, value in state_dict.items():
        if key.startswith('tasks.'):
            owner = key.split('.', 2)[1]
            if owner != task:
                continue
            out[key[len(f'tasks.{task}.'):] if native else key] = value
            continue
        for layer in layers:
            head = f'{layer}.copies.'
            if key.startswith(head):
                owner, _, rest = key[len(head):].partition('.')
                if owner not in tasks:
                    raise KeyError(f'recon collapse: {key} names no task of {list(tasks)}')
                if owner == task:
                    out[f'{layer}.{rest}'] = value
                break
        else:
            out[key] = value
    return out
