"""Short names for the methods, as ``tools/compare_methods.py`` and the benchmarks take them.

``method_optim_overrides('tbgc+pcgrad')`` gives the ``optim_wrapper`` keys that select a method:
its ``aggregator`` and, where the method replaces the global clip (TBGC), ``clip_grad=None``.
A ``+`` chains methods with :class:`ChainAggregator` (per-task rescalings first).

Model-side methods (``MODEL_METHODS``: GradSplit, Recon, ...) change the model or the training
loop instead; a name takes at most one of them, ``+`` any aggregators (``recon+pcgrad``).
``method_config_overrides(name, **context)`` gives all the top-level config keys of a name.
"""
import copy
from typing import Dict, List, Optional, Set, Tuple

#: name -> (aggregator config, whether the method replaces the config's global clip)
METHOD_PRESETS: Dict[str, tuple] = {
    'vanilla': (dict(type='SumAggregator'), False),
    'tbgc': (dict(type='TBGCAggregator', max_norm=0.1), True),
    'maxgnr': (dict(type='MaxGNRAggregator'), False),
    'equal': (dict(type='EqualAggregator'), False),
    'uw': (dict(type='UncertaintyAggregator'), False),
    'dwa': (dict(type='DWAAggregator'), False),
    'gradnorm': (dict(type='GradNormAggregator'), False),
    # L_t(0) the mean of the first 50 losses (the comparison's warm-up): for heads whose loss rises first
    'gradnorm_ref50': (dict(type='GradNormAggregator', reference_steps=50), False),
    'rlw': (dict(type='RLWAggregator'), False),
    'famo': (dict(type='FAMOAggregator'), False),
    'pcgrad': (dict(type='PCGradAggregator'), False),
    'cagrad': (dict(type='CAGradAggregator'), False),
    'mgda': (dict(type='MGDAAggregator'), False),
    'imtl': (dict(type='IMTLGAggregator'), False),
    'gradvac': (dict(type='GradVacAggregator'), False),
    'aligned': (dict(type='AlignedMTLAggregator'), False),
    'nashmtl': (dict(type='NashMTLAggregator'), False),
    # Gram-matrix and projection methods
    'upgrad': (dict(type='UPGradAggregator'), False),
    'dualproj': (dict(type='DualProjAggregator'), False),
    'fairgrad': (dict(type='FairGradAggregator'), False),
    'config': (dict(type='ConFIGAggregator'), False),
    'crmogm': (dict(type='CRMOGMAggregator'), False),          # EMA of MGDA's weights
    'imtl_hybrid': (dict(type='IMTLAggregator'), False),       # IMTL-L scales + IMTL-G ('imtl' is IMTL-G alone)
    # stateful gradient methods
    'dbmtl': (dict(type='DBMTLAggregator'), False),
    'moco': (dict(type='MoCoAggregator'), False),
    'excessmtl': (dict(type='ExcessMTLAggregator'), False),
    # reference excess risk over the first 50 steps (the comparison's warm-up)
    'excessmtl_ref50': (dict(type='ExcessMTLAggregator', reference_steps=50), False),
    'graddrop': (dict(type='GradDropAggregator'), False),
    # loss scalarisers (streaming)
    'stch': (dict(type='STCHAggregator'), False),
    'gls': (dict(type='GLSAggregator'), False),
    'imtl_l': (dict(type='IMTLLAggregator'), False),
    # independent gradient samples of each task (each task's batch in 3 parts, one backward each)
    'sdmgrad': (dict(type='SDMGradAggregator'), False),
    'modo': (dict(type='MoDoAggregator'), False),
}


#: Methods acting on the model or the training loop: name -> top-level config overrides, merged key by
#: key into the config (mmengine inheritance). A string ``'{key}'`` is filled from the context given to
#: ``method_config_overrides(name, key=value)`` (default: ``METHOD_CONTEXT``). An entry with
#: ``train_cfg=dict(type=...)`` (its own training loop) is trained, but not step-benchmarked.
MODEL_METHODS: Dict[str, dict] = {
    'gradsplit': dict(model=dict(grad_split=dict(modules=None))),  # every block of the last stage
    'recon': dict(model=dict(recon=dict(report='{recon_report}', param_budget=0.05, score='raw', threshold=0.0))),
    'drmgf': dict(train_cfg=dict(type='DRMGFTrainLoop', round_iters=25, gate_until=0.5)),
}
#: default context: the report ``tools/recon_search.py configs/allinone_demo.py`` writes
METHOD_CONTEXT: Dict[str, str] = dict(
    recon_report='work_dirs/allinone_demo_recon_search/recon_search/recon_report.json')


def _unknown(part: str) -> KeyError:
    return KeyError(f'unknown method {part!r}; known: aggregators {sorted(METHOD_PRESETS)}, model-side '
                    f'{sorted(MODEL_METHODS)} (or an aggregator class name), joined by +')


def split_method(name: str) -> Tuple[Optional[str], List[str]]:
    """``'recon+pcgrad'`` -> ``('recon', ['pcgrad'])``: the model-side part (at most one) and the aggregators."""
    parts = [p.strip() for p in name.split('+') if p.strip()]
    if not parts:
        raise ValueError('empty method name')
    for p in parts:
        if p not in MODEL_METHODS and p not in METHOD_PRESETS and not p.endswith('Aggregator'):
            raise _unknown(p)
    model = [p for p in parts if p in MODEL_METHODS]
    if len(model) > 1:
        raise ValueError(f'method {name!r} names {len(model)} model-side methods {model}; at most one')
    return (model[0] if model else None), [p for p in parts if p not in MODEL_METHODS]


def method_optim_overrides(name: str) -> dict:
    """``optim_wrapper`` overrides for a preset name, a ``+`` chain of them, or ``Type`` of a class.

    A model-side part of the name is skipped (its own overrides: ``method_config_overrides``); a name
    without aggregators gets ``vanilla``'s."""
    _, parts = split_method(name)
    aggs, drop_clip = [], False
    for p in parts or ['vanilla']:
        if p in METHOD_PRESETS:
            agg, replaces_clip = METHOD_PRESETS[p]
        else:
            agg, replaces_clip = dict(type=p), False
        aggs.append(copy.deepcopy(agg))
        drop_clip = drop_clip or replaces_clip
    agg = aggs[0] if len(aggs) == 1 else dict(type='ChainAggregator', steps=aggs)
    out = dict(aggregator=agg)
    if drop_clip:
        out['clip_grad'] = None
    return out


def _fill(obj, value):
    """``obj`` with every ``'{key}'`` string replaced by ``value(key)``."""
    if isinstance(obj, dict):
        return {k: _fill(v, value) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fill(v, value) for v in obj)
    if isinstance(obj, str) and len(obj) > 2 and obj[0] == '{' and obj[-1] == '}':
        return value(obj[1:-1])
    return obj


def merge_overrides(a: dict, b: dict) -> dict:
    """``b`` merged into a copy of ``a``: dicts key by key (as config inheritance), other values replaced."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        both = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = merge_overrides(out[k], v) if both else copy.deepcopy(v)
    return out


def method_context_keys(name: str) -> Set[str]:
    """The context keys the model-side part of ``name`` uses (``{'recon_report'}`` for Recon)."""
    model, _ = split_method(name)
    keys: Set[str] = set()
    if model:
        _fill(MODEL_METHODS[model], keys.add)
    return keys


def method_config_overrides(name: str, **context) -> dict:
    """All top-level config overrides of a method name: ``optim_wrapper`` (the aggregator part; ``vanilla``'s
    when the name has none) merged with the model-side entry's keys (``model``, ``train_cfg``, ...).

    ``context`` fills the entry's ``'{key}'`` strings (``recon_report=PATH``; ``None`` = the default of
    ``METHOD_CONTEXT``). Raises ``KeyError`` naming an unknown part, ``ValueError`` for two model-side parts.
    """
    model, _ = split_method(name)
    out = dict(optim_wrapper=method_optim_overrides(name))
    if model:
        ctx = dict(METHOD_CONTEXT, **{k: v for k, v in context.items() if v is not None})

        def value(key):
            if key not in ctx:
                raise KeyError(f'method {name!r} needs {key}=... (no default in METHOD_CONTEXT)')
            return ctx[key]
        out = merge_overrides(out, _fill(MODEL_METHODS[model], value))
    return out


def changes_train_loop(name: str) -> bool:
    """Whether the method runs its own training loop (``train_cfg.type``): one optim-wrapper step is not it."""
    model, _ = split_method(name)
    return bool(model) and 'type' in (MODEL_METHODS[model].get('train_cfg') or {})
