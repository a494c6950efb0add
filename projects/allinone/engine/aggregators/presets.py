"""Short names for the methods, as ``tools/compare_methods.py`` and the benchmarks take them.

``method_optim_overrides('tbgc+pcgrad')`` gives the ``optim_wrapper`` keys that select a method:
its ``aggregator`` and, where the method replaces the global clip (TBGC), ``clip_grad=None``.
A ``+`` chains methods with :class:`ChainAggregator` (per-task rescalings first).
"""
import copy
from typing import Dict

#: name -> (aggregator config, whether the method replaces the config's global clip)
METHOD_PRESETS: Dict[str, tuple] = {
    'vanilla': (dict(type='SumAggregator'), False),
    'tbgc': (dict(type='TBGCAggregator', max_norm=0.1), True),
    'maxgnr': (dict(type='MaxGNRAggregator'), False),
    'equal': (dict(type='EqualAggregator'), False),
    'uw': (dict(type='UncertaintyAggregator'), False),
    'dwa': (dict(type='DWAAggregator'), False),
    'gradnorm': (dict(type='GradNormAggregator'), False),
    'rlw': (dict(type='RLWAggregator'), False),
    'famo': (dict(type='FAMOAggregator'), False),
    'pcgrad': (dict(type='PCGradAggregator'), False),
    'cagrad': (dict(type='CAGradAggregator'), False),
    'mgda': (dict(type='MGDAAggregator'), False),
    'imtl': (dict(type='IMTLGAggregator'), False),
    'gradvac': (dict(type='GradVacAggregator'), False),
    'aligned': (dict(type='AlignedMTLAggregator'), False),
    'nashmtl': (dict(type='NashMTLAggregator'), False),
}


def method_optim_overrides(name: str) -> dict:
    """``optim_wrapper`` overrides for a preset name, a ``+`` chain of them, or ``Type`` of a class."""
    parts = [p.strip() for p in name.split('+') if p.strip()]
    if not parts:
        raise ValueError('empty method name')
    aggs, drop_clip = [], False
    for p in parts:
        if p in METHOD_PRESETS:
            agg, replaces_clip = METHOD_PRESETS[p]
        elif p.endswith('Aggregator'):
            agg, replaces_clip = dict(type=p), False
        else:
            raise KeyError(f'unknown method {p!r}; known: {sorted(METHOD_PRESETS)} (or an aggregator class name)')
        aggs.append(copy.deepcopy(agg))
        drop_clip = drop_clip or replaces_clip
    agg = aggs[0] if len(aggs) == 1 else dict(type='ChainAggregator', steps=aggs)
    out = dict(aggregator=agg)
    if drop_clip:
        out['clip_grad'] = None
    return out
