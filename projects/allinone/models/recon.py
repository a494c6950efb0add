"""Recon (Shi et al., ICLR 2023): per-task copies of the shared layers where the tasks conflict most.

Three parts live here; the search itself (gradient cosines recorded during joint training) is
:class:`~projects.allinone.engine.hooks.ReconSearchHook` and ``tools/recon_search.py``.

* :class:`TaskSpecificLayer` replaces one shared layer by one copy per task and runs the copy of
  the task whose forward is running (the model's :class:`TaskContext`). Its state-dict keys are
  ``<layer>.copies.<task>.<param>``; a checkpoint holding the plain ``<layer>.<param>`` keys (a
  pretrained backbone, a pre-conversion or search checkpoint given as ``load_from``) fills every
  copy from them, so the copies start from the loaded weights instead of being re-initialised.
* :func:`rank_layers` / :func:`select_layers` read a search report: the conflict count below any
  threshold S (from the stored cosine histograms), a raw and a size-normalised score, and the
  selection by count (``top_k``) or by parameter budget.
* :func:`collapse_state_dict` turns a converted checkpoint back into a plain single-task one.

Config (``model.recon``)::

    recon=dict(layers=['backbone.layer4.1.conv2', ...])        # the layers, by name
    recon=dict(report='work_dirs/recon/recon_report.json',     # or read from a search report:
               top_k=None,          # the K best layers, or
               param_budget=None,   # the best layers whose copies add at most this fraction of the
                                    # shared parameters ((T - 1) * size of each chosen layer)
               score='raw',         # 'raw' (conflict count, as the paper) or 'normalized'
               threshold=None)      # S (default: the report's)
"""
import copy
import json
import math
import os.path as osp
from collections import OrderedDict
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from torch import nn

from .routing import TaskContext

SCORES = ('raw', 'normalized')
SHARED_ROOTS = ('backbone', 'neck')  # the shared modules of AllInOneModel


class TaskSpecificLayer(nn.Module):
    """One copy of ``layer`` per task; ``forward`` runs the copy of the task whose forward is running.

    Attributes a caller reads from the original layer (``out_channels``, ``weight``, ...) are looked
    up on the running task's copy (the first copy outside a task's forward).
    """

    def __init__(self, layer: nn.Module, tasks: Sequence[str], context: TaskContext, name: str = ''):
        super().__init__()
        if not tasks:
            raise ValueError('TaskSpecificLayer needs at least one task')
        self.copies = nn.ModuleDict(OrderedDict((t, copy.deepcopy(layer)) for t in tasks))
        self._task_context = context
        self.layer_name = name
        self._register_load_state_dict_pre_hook(self._fill_copies_from_plain_keys)

    @property
    def task_names(self) -> List[str]:
        return list(self.copies.keys())

    def _running_copy(self, strict: bool) -> nn.Module:
        copies = self._modules['copies']
        ctx = self.__dict__.get('_task_context')
        task = None if ctx is None else ctx.task
        if task is None:
            if strict:
                raise RuntimeError(f'Recon: {self.layer_name or "a per-task layer"} has one copy per task '
                                   f'({list(copies)}) and no task is running; run the model through '
                                   'task_loss/val_step/test_step or forward(..., task=...)')
            return next(iter(copies.values()))
        if task not in copies:
            raise KeyError(f'Recon: {self.layer_name} has no copy for task {task!r}; it has {list(copies)}')
        return copies[task]

    def forward(self, *args, **kwargs):
        return self._running_copy(strict=True)(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith('__') or 'copies' not in self.__dict__.get('_modules', {}):
                raise
            return getattr(self._running_copy(strict=False), name)

    def _fill_copies_from_plain_keys(self, state_dict, prefix, local_metadata, strict, missing_keys,
                                     unexpected_keys, error_msgs) -> None:
        """``<prefix><param>`` (a checkpoint of the unconverted layer) -> every ``<prefix>copies.<t>.<param>``
        the state dict does not hold already; the plain key is consumed (not reported unexpected)."""
        plain = [k for k in list(state_dict) if k.startswith(prefix) and not k.startswith(prefix + 'copies.')]
        for key in plain:
            rest = key[len(prefix):]
            value = state_dict.pop(key)
            for t in self.copies:
                state_dict.setdefault(f'{prefix}copies.{t}.{rest}', value)

    def extra_repr(self) -> str:
        return f'layer={self.layer_name!r}, tasks={self.task_names}'


# ---------------------------------------------------------------------- layers of a model
def is_convertible(module: nn.Module) -> bool:
    """A layer can be copied per task when its sub-modules hold no parameters (Conv, Norm, Linear,
    ...): copying a module that also owns parameters through its children (a ViT's ``cls_token``
    holder) would copy those children too."""
    return not any(True for child in module.children() for _ in child.parameters())


def task_layers(model: nn.Module) -> Iterator[Tuple[str, TaskSpecificLayer]]:
    for name, m in model.named_modules():
        if isinstance(m, TaskSpecificLayer):
            yield name, m


def task_copy_parameters(model: nn.Module, task: str, prefix: str = '') -> Iterator[Tuple[str, nn.Parameter]]:
    """Trainable parameters of ``task``'s copies in the converted layers of ``model``."""
    for name, layer in task_layers(model):
        if task in layer.copies:
            full = f'{prefix}.{name}' if prefix else name
            for n, p in layer.copies[task].named_parameters(prefix=f'{full}.copies.{task}'):
                if p.requires_grad:
                    yield n, p


def task_copy_parameter_ids(model: nn.Module) -> set:
    return {id(p) for _, layer in task_layers(model) for p in layer.copies.parameters()}


def convert_layers(model: nn.Module, names: Sequence[str], tasks: Sequence[str],
                   context: TaskContext) -> List[str]:
    """Replace each named layer of ``model`` (in its shared backbone) by a :class:`TaskSpecificLayer`
    whose copies start from the layer's current weights. Returns the resolved names."""
    modules = dict(model.named_modules())
    aliases: Dict[int, List[str]] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        aliases.setdefault(id(m), []).append(n)
    done = []
    for raw in names:
        name = raw if raw in modules else f'backbone.{raw}'
        if name not in modules or not name:
            raise KeyError(f'recon: no layer {raw!r} in the model (names as in the search report, e.g. '
                           '"backbone.layer4.1.conv2")')
        if name.split('.')[0] not in SHARED_ROOTS:
            raise ValueError(f'recon: {name} is not a shared layer (in the backbone or the shared neck)')
        if name in done:
            raise ValueError(f'recon: layer {name} is named twice')
        module = modules[name]
        if isinstance(module, TaskSpecificLayer) or any(name.startswith(d + '.') for d in done):
            raise ValueError(f'recon: {name} is already per task')
        if any(d.startswith(name + '.') for d in done):
            raise ValueError(f'recon: {name} contains a layer converted before it')
        if not any(True for _ in module.parameters(recurse=False)):
            raise ValueError(f'recon: {name} ({type(module).__name__}) owns no parameters: not a layer')
        if not is_convertible(module):
            raise ValueError(f'recon: {name} ({type(module).__name__}) owns parameters and has sub-modules '
                             'with parameters of their own; only leaf layers can be copied per task')
        if len(aliases.get(id(module), [])) > 1:
            raise ValueError(f'recon: {name} is the same module as {aliases[id(module)]}; a layer used in '
                             'several places cannot be converted')
        parent_name, _, attr = name.rpartition('.')
        setattr(modules[parent_name], attr, TaskSpecificLayer(module, tasks, context, name))
        done.append(name)
    return done


def sync_task_copies(model: nn.Module) -> None:
    """Every task's copy takes the weights of the first one (after a weight initialisation that drew
    each copy at random)."""
    for _, layer in task_layers(model):
        copies = list(layer.copies.values())
        state = copies[0].state_dict()
        for other in copies[1:]:
            other.load_state_dict(state)


# ---------------------------------------------------------------------- search reports
def chance_below(threshold: float, numel: int) -> float:
    """P(cos < threshold) for two independent uniformly random directions in ``numel`` dimensions:
    what pure noise would give a layer of that size (``(1 + cos) / 2 ~ Beta((d-1)/2, (d-1)/2)``)."""
    if threshold <= -1:
        return 0.0
    if threshold > 1:
        return 1.0
    if numel <= 1:
        return 0.5 if threshold <= 1 else 1.0
    a = (numel - 1) / 2.0
    x = (1.0 + threshold) / 2.0
    try:
        from scipy.special import betainc
        return float(betainc(a, a, x))
    except ImportError:  # the normal approximation, cos ~ N(0, 1 / d)
        return 0.5 * (1.0 + math.erf(threshold * math.sqrt(numel) / math.sqrt(2.0)))


def load_report(report) -> dict:
    if isinstance(report, dict):
        return report
    if not osp.isfile(report):
        raise FileNotFoundError(f'recon: no search report {report!r} (tools/recon_search.py writes it)')
    with open(report) as f:
        return json.load(f)


def cosine_quantiles(report, quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95)) -> Dict[float, float]:
    """Quantiles of every recorded cosine of the report (all layers and task pairs pooled), read from
    the histograms (each bin's lower edge): where the cosines of this model and data actually lie, to
    choose S by (e.g. the 5% quantile: S then catches about the lowest 5% of all observations).

    With one batch per task (AllInOne) the task gradients also differ by their batches' sampling
    noise, so the cosines sit nearer 0 than in a search where every task sees the same images (the
    official code): a paper's S (-0.02 on NYUv2, -0.1 on Multi-MNIST) may fall in a different part
    of this distribution."""
    report = load_report(report)
    width = float(report['bin_width'])
    total = None
    for layer in report['layers']:
        for h in layer['hist']:
            total = list(h) if total is None else [a + b for a, b in zip(total, h)]
    n = sum(total or [])
    if not n:
        raise ValueError('recon: the report holds no cosine')
    out = {}
    for q in quantiles:
        acc, k = 0, 0
        for k, c in enumerate(total):
            acc += c
            if acc >= q * n:
                break
        out[float(q)] = round(-1.0 + k * width, 10)
    return out


def rank_layers(report, threshold: Optional[float] = None, score: str = 'raw') -> List[dict]:
    """The report's layers scored at ``threshold`` (default: the report's) and ranked by ``score``.

    Per layer: ``conflicts`` (number of (iteration, task pair) cosines below S, summed over the
    pairs: the paper's score, ``raw``), ``observations``, ``conflict_fraction``, ``chance`` (the
    fraction random directions of the layer's size fall below S) and ``normalized``
    (``conflict_fraction - chance``: the conflicts a layer shows beyond what its size alone
    explains; the raw count rewards small layers, whose cosines are noisier, for S < 0). S is taken
    on the histogram's grid (multiples of the bin width, 0.01 by default).
    """
    if score not in SCORES:
        raise ValueError(f'recon: score must be one of {SCORES}, got {score!r}')
    report = load_report(report)
    width = float(report['bin_width'])
    nbins = int(report['bins'])
    S = float(report.get('threshold', 0.0) if threshold is None else threshold)
    k = min(max(int(round((S + 1.0) / width)), 0), nbins)
    S_grid = round(-1.0 + k * width, 10)
    out = []
    for order, layer in enumerate(report['layers']):
        hist = layer['hist']
        conflicts = sum(sum(h[:k]) for h in hist)
        obs = sum(sum(h) for h in hist)
        frac = conflicts / obs if obs else 0.0
        chance = chance_below(S_grid, int(layer['numel']))
        row = {key: v for key, v in layer.items() if key != 'hist'}
        row.update(conflicts=int(conflicts), observations=int(obs), conflict_fraction=frac, chance=chance,
                   normalized=(frac - chance) if obs else 0.0, threshold=S_grid, _order=order)
        out.append(row)
    key = (lambda r: (-r['conflicts'], -r['normalized'], r['_order'])) if score == 'raw' else \
        (lambda r: (-r['normalized'], -r['conflicts'], r['_order']))
    out.sort(key=key)
    for rank, row in enumerate(out, 1):
        row.pop('_order')
        row['rank'] = rank
    return out


def select_layers(report, top_k: Optional[int] = None, param_budget: Optional[float] = None,
                  score: str = 'raw', threshold: Optional[float] = None,
                  num_tasks: Optional[int] = None) -> List[str]:
    """Layer names to convert: the ``top_k`` best, or the best whose copies fit ``param_budget``.

    Only layers with a positive score and that can be copied (:func:`is_convertible`) are taken.
    ``param_budget`` is a fraction of the report's shared parameter count; a layer costs
    ``(T - 1) * numel`` extra parameters; layers are taken in rank order, passing over one that no
    longer fits.
    """
    if (top_k is None) == (param_budget is None):
        raise ValueError('recon: give exactly one of top_k and param_budget with a report')
    report = load_report(report)
    ranked = [r for r in rank_layers(report, threshold, score)
              if r.get('convertible', True) and (r['conflicts'] if score == 'raw' else r['normalized']) > 0]
    if top_k is not None:
        if int(top_k) < 0:
            raise ValueError(f'recon: top_k must be >= 0, got {top_k}')
        return [r['name'] for r in ranked[:int(top_k)]]
    T = int(num_tasks or len(report['tasks']))
    budget = float(param_budget) * float(report['shared_params'])
    chosen, used = [], 0
    for r in ranked:
        cost = (T - 1) * int(r['numel'])
        if used + cost <= budget:
            chosen.append(r['name'])
            used += cost
    return chosen


def resolve_recon_layers(cfg, num_tasks: int) -> List[str]:
    """``model.recon`` -> the list of layer names to convert."""
    cfg = dict(cfg)
    layers = cfg.pop('layers', None)
    report = cfg.pop('report', None)
    if (layers is None) == (report is None):
        raise ValueError('model.recon needs exactly one of layers=[names] and report=PATH')
    if layers is not None:
        if cfg:
            raise KeyError(f'model.recon: unknown key(s) {sorted(cfg)} with layers=')
        return [layers] if isinstance(layers, str) else list(layers)
    allowed = {'top_k', 'param_budget', 'score', 'threshold'}
    if set(cfg) - allowed:
        raise KeyError(f'model.recon: unknown key(s) {sorted(set(cfg) - allowed)}; known: {sorted(allowed)}')
    return select_layers(report, num_tasks=num_tasks, **cfg)


# ---------------------------------------------------------------------- collapse
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
