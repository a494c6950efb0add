"""Recon (Shi et al., ICLR 2023), the model side: per-task copies of the shared layers where the
tasks conflict most.

* :class:`Recon` is the routing method ``model.recon`` builds: it converts the chosen layers (named,
  or read from a search report, :mod:`.report`) and gives each task its copies' parameters.
* :class:`TaskSpecificLayer` replaces one shared layer by one copy per task and runs the copy of
  the task whose forward is running (the model's :class:`TaskContext`). Its state-dict keys are
  ``<layer>.copies.<task>.<param>``; a checkpoint holding the plain ``<layer>.<param>`` keys (a
  pretrained backbone, a pre-conversion or search checkpoint given as ``load_from``) fills every
  copy from them, so the copies start from the loaded weights instead of being re-initialised.

The search (gradient cosines recorded during joint training) is :mod:`.search_hook` and
``tools/recon_search.py``; its report is written and read in :mod:`.report`; :mod:`.collapse`
turns a converted checkpoint back into plain single-task ones.

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
from collections import OrderedDict
from typing import Dict, Iterator, List, Sequence, Tuple

from torch import nn

from ...registry import ROUTING
from ..base import RoutingMethod, model_name
from ..context import TaskContext
from .report import select_layers

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
        name = model_name(modules, raw)
        if name is None:
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


@ROUTING.register_module(name='recon')
class Recon(RoutingMethod):
    """``model.recon``: the chosen shared layers become :class:`TaskSpecificLayer` (config above).

    ``layers`` (names) or ``report`` (a search report, with ``top_k`` / ``param_budget`` / ``score`` /
    ``threshold``); the resolved names are :attr:`layers` after :meth:`attach`.
    """

    attach_order = 10  # replaces modules: before any method that hooks modules by name

    def __init__(self, **cfg):
        self.cfg = cfg
        self.layers: List[str] = []

    def attach(self, model: nn.Module, tasks: Sequence[str], context: TaskContext) -> 'Recon':
        self.layers = convert_layers(model, resolve_recon_layers(self.cfg, len(tasks)), tasks, context)
        return self

    def task_parameters(self, model: nn.Module, task: str) -> Iterator[Tuple[str, nn.Parameter]]:
        return task_copy_parameters(model, task)

    def after_init_weights(self, model: nn.Module) -> None:
        sync_task_copies(model)  # every task's copy starts from the same initial weights

    def plain_key(self, key: str, prefix: str) -> str:
        """``<layer>.copies.<task>.<p>`` -> ``<layer>.<p>`` (keys of the module ``prefix``, e.g. 'backbone')."""
        for layer in self.layers:
            if not layer.startswith(prefix + '.'):
                continue
            local = layer[len(prefix) + 1:]   # the layer's name inside the module ``prefix``
            head = f'{local}.copies.'
            if key.startswith(head):
                return f'{local}.{key[len(head):].split(".", 1)[1]}'
        return key

    def __repr__(self):
        return f'Recon(layers={self.layers})'
