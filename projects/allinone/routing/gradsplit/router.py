"""GradSplit (Deng et al., WACV 2023): each task trains only its own channel groups of chosen modules.

At every chosen module the output channels are split into T groups, group u belonging to task u
(the model's task order). The relation matrix ``R`` (T x T; ``R[t, u] = 1``: task t may train
group u) decides which groups a task's gradient reaches. During task t's training forward the
module's output ``y`` is replaced by ``torch.where(m_t, y, y.detach())`` (``m_t``: the channels of
the groups task t may train): the forward values are exactly ``y`` (bit for bit), and the
backward gives the channels outside ``m_t`` a zero gradient. So the parameters that *produce* a
channel of group u (its row of the last conv and norm before the module's output, see
:func:`routed_parameters`) receive only the gradients of the tasks with ``R[t, u] = 1``;
parameters before them still receive every task's gradient, but task t's reaches them only through
its own groups. The paper applies the split to a series of convolution modules; the default here
is every block of the last ResNet stage (each block's last conv + norm and its downsample are then
routed), not only the stage's output (which routes the last block's alone).
Nothing else changes: no parameters, no state-dict keys, and inference (``val_step``,
``test_step``, ``forward``, anything under ``torch.no_grad``) runs the plain network. Because the
routing happens inside each task's own backward, it composes with every gradient aggregator.

Config (``model.grad_split``)::

    grad_split=dict(
        modules=None,      # default: every block of the last stage of a ResNet ('backbone.layer4.0',
                           # 'backbone.layer4.1', ...), or the MLP hidden units of the last quarter of
                           # a ViT's blocks; names of the model ('backbone.layer4.1') or of the
                           # backbone ('layer4.1'); 'backbone.layer3.*' is every child of layer3; a
                           # name ending in ':input' routes the module's input instead (e.g. the
                           # attention heads before 'backbone.layers.11.attn.proj:input')
        relation=None,     # None: identity; a T x T 0/1 list in task order; {task: [tasks whose
                           # groups it may train]}; a JSON file path ({"tasks": [...],
                           # "relation": [[...]]}); or 'affinity': estimated during a warm-up by
                           # GradSplitAffinityHook (custom_hooks), which writes such a file
        groups=None,       # None: equal groups; or T positive proportions, in task order
        channel_dim=None)  # None: dim 1 of 4-d/5-d feature maps, the last dim otherwise (tokens)
"""
import json
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from torch import Tensor, nn

from ...registry import ROUTING
from ..base import RoutingMethod, model_name
from ..context import TaskContext

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PER_CHANNEL_NORM = (nn.modules.batchnorm._NormBase, )  # BatchNorm*, SyncBatchNorm, InstanceNorm*
_NORM = _PER_CHANNEL_NORM + (nn.GroupNorm, nn.LayerNorm)


def _resolve_module(model: nn.Module, name: str) -> Tuple[str, nn.Module]:
    modules = dict(model.named_modules())
    found = model_name(modules, name)
    if found is not None:
        return found, modules[found]
    raise KeyError(f'grad_split.modules: no module {name!r} in the model (names are of the model, '
                   f'e.g. "backbone.layer4", or of the backbone, e.g. "layer4")')


def _expand_names(model: nn.Module, names: Sequence[str]) -> List[str]:
    """``'backbone.layer3.*'`` -> the names of every child of ``backbone.layer3`` (others unchanged)."""
    out = []
    for raw in names:
        on_input = raw.endswith(':input')
        base = raw[:-len(':input')] if on_input else raw
        if base.endswith('.*'):
            parent, module = _resolve_module(model, base[:-2])
            children = [n for n, _ in module.named_children()]
            if not children:
                raise ValueError(f'grad_split.modules: {raw!r}: {parent} has no child modules')
            out += [f'{parent}.{c}' + (':input' if on_input else '') for c in children]
        else:
            out.append(raw)
    return out


def default_split_modules(backbone: nn.Module) -> List[str]:
    """Every block of the last stage of a ResNet (each block's last conv + norm and downsample are
    routed: the paper's series of modules); the MLP hidden units of the last quarter of a ViT's
    blocks."""
    res_layers = getattr(backbone, 'res_layers', None)
    if res_layers:
        stage = getattr(backbone, res_layers[-1])
        return [f'backbone.{res_layers[-1]}.{n}' for n, _ in stage.named_children()]
    layers = getattr(backbone, 'layers', None)
    if isinstance(layers, nn.ModuleList) and len(layers) and hasattr(layers[0], 'ffn'):
        n = len(layers)
        out = []
        for i in range(n - max(1, n // 4), n):
            ffn = layers[i].ffn
            hidden = getattr(ffn, 'layers', None)
            if hidden is None or not len(hidden):
                break
            out.append(f'backbone.layers.{i}.ffn.layers.0')
        if out:
            return out
    raise ValueError(f'grad_split.modules: no default for a {type(backbone).__name__} backbone; name the '
                     'modules to split, e.g. grad_split=dict(modules=["backbone.<stage>"])')


def load_relation(relation: Union[None, str, Sequence, Dict], tasks: Sequence[str]) -> Tensor:
    """The T x T bool relation matrix in the order of ``tasks`` (``R[t, u]``: t may train group u)."""
    tasks = list(tasks)
    T = len(tasks)
    if relation is None:
        return torch.eye(T, dtype=torch.bool)
    source = 'grad_split.relation'
    if isinstance(relation, str):
        if relation == 'affinity':
            raise ValueError("relation='affinity' is estimated during training by GradSplitAffinityHook; "
                             'load_relation takes the matrix or the file the hook wrote')
        if not osp.isfile(relation):
            raise FileNotFoundError(f'grad_split.relation: no file {relation!r}')
        with open(relation) as f:
            data = json.load(f)
        source = relation
        if isinstance(data, dict):
            order = data.get('tasks')
            matrix = data.get('relation')
            if matrix is None:
                raise KeyError(f'{relation}: needs a "relation" entry (T x T 0/1 list)')
            if order is not None:
                missing = [t for t in tasks if t not in order]
                if missing:
                    raise KeyError(f'{relation}: has no row for task(s) {missing}; it covers {order}')
                idx = [order.index(t) for t in tasks]
                matrix = [[matrix[i][j] for j in idx] for i in idx]
            relation = matrix
        else:
            relation = data
    if isinstance(relation, dict):
        unknown = set(relation) | {u for us in relation.values() for u in us}
        unknown -= set(tasks)
        if unknown:
            raise KeyError(f'{source}: unknown task(s) {sorted(unknown)}; tasks are {tasks}')
        R = torch.eye(T, dtype=torch.bool)
        for t, us in relation.items():
            for u in us:
                R[tasks.index(t), tasks.index(u)] = True
        return R
    R = torch.as_tensor(relation, dtype=torch.float64)
    if R.shape != (T, T):
        raise ValueError(f'{source}: expected a {T} x {T} matrix (tasks {tasks}), got shape {tuple(R.shape)}')
    if not bool(((R == 0) | (R == 1)).all()):
        raise ValueError(f'{source}: entries must be 0 or 1, got {R.tolist()}')
    return R.bool()


def _is_leaf(m: nn.Module, kinds) -> bool:
    return isinstance(m, kinds) and not isinstance(m, nn.modules.conv._ConvTransposeNd)


def _producers(module: nn.Module) -> Optional[List[nn.Module]]:
    """The modules whose output channel c *is* channel c of ``module``'s output (their weight rows /
    norm channels), or ``None`` where this cannot be read from the structure.

    A conv / linear / norm layer: itself. A residual block (``conv2`` / ``conv3`` with ``norm<k>``
    or ``bn<k>``, and ``downsample``; mmdet / mmpretrain / torchvision ResNets): its last norm and
    conv and the producers of its downsample (the identity path has none). A ``Sequential``: from
    its end, the norms and then the conv / linear before them (skipping activations and dropout),
    or the producers of a last composite child (a ResNet stage: its last block's). The conv before
    a norm counts only when the norm is per channel (BatchNorm, InstanceNorm): a GroupNorm or
    LayerNorm mixes channels in its statistics, so a cut channel still passes gradient to the
    other rows of the conv before it (only the norm's own affine parameters are routed then)."""
    if _is_leaf(module, _CONV + (nn.Linear, ) + _NORM):
        return [module]
    last = next((k for k in (3, 2) if isinstance(getattr(module, f'conv{k}', None), _CONV)), None)
    if last is not None and hasattr(module, 'downsample'):
        norm = getattr(module, f'norm{last}', None)
        norm = norm if isinstance(norm, _NORM) else getattr(module, f'bn{last}', None)
        if not isinstance(norm, _NORM):
            return None
        out = [norm] + ([getattr(module, f'conv{last}')] if isinstance(norm, _PER_CHANNEL_NORM) else [])
        if module.downsample is not None:
            inner = _producers(module.downsample)
            if inner is None:
                return None
            out += inner
        return out
    if isinstance(module, nn.Sequential):
        out = []
        for child in reversed(list(module.children())):
            if not any(True for _ in child.parameters()):
                continue  # activation, dropout, pooling
            if _is_leaf(child, _NORM):
                out.append(child)
                if not isinstance(child, _PER_CHANNEL_NORM):
                    return out
                continue
            if _is_leaf(child, _CONV + (nn.Linear, )):
                return out + [child]
            inner = _producers(child)
            return None if inner is None else out + inner
        return out or None
    return None


def routed_parameters(split: 'GradSplit', model: nn.Module) -> Tuple[Dict[str, str], List[str]]:
    """``({parameter name: split module key}, [split modules whose routed parameters are unknown])``.

    A routed parameter's dim 0 indexes the split module's output channels (conv filters, linear
    rows, norm channels, biases): its rows of group u receive only the gradients of the tasks with
    ``R[t, u] = 1``. ``:input`` splits route whatever produces the module's input, which the
    structure does not say: they are listed as unknown."""
    names = {id(m): n for n, m in model.named_modules()}
    routed, unknown = {}, []
    for key, module in split.split_modules.items():
        producers = None if key.endswith(':input') else _producers(module)
        if producers is None:
            unknown.append(key)
            continue
        for m in producers:
            for pn, p in m.named_parameters(recurse=False):
                if p.requires_grad:
                    routed.setdefault(f'{names[id(m)]}.{pn}', key)
    return routed, unknown


class _SplitHook:
    """Forward hook (or pre-hook, for ``:input``) of one split module; a callable object rather than
    a closure so that ``copy.deepcopy`` of the model re-points it at the copied :class:`GradSplit`."""

    def __init__(self, split: 'GradSplit', name: str, on_input: bool):
        self.split, self.name, self.on_input = split, name, on_input

    def __call__(self, module, args, output=None):
        ctx = self.split.context
        if ctx is None or not ctx.train or ctx.task is None or not torch.is_grad_enabled():
            return None
        if self.on_input:
            if not args:
                return None
            return (self.split.route(self.name, ctx.task, args[0]), ) + tuple(args[1:])
        if isinstance(output, Tensor):
            return self.split.route(self.name, ctx.task, output)
        if isinstance(output, (tuple, list)):
            return type(output)(self.split.route(self.name, ctx.task, o) if isinstance(o, Tensor) else o
                                for o in output)
        raise TypeError(f'grad_split: module {self.name} returned {type(output).__name__}; expected a '
                        'tensor or a tuple/list of tensors')


@ROUTING.register_module(name='grad_split')
class GradSplit(RoutingMethod):
    """Routes each task's backward to its channel groups at the chosen modules (module docstring).

    Built by :class:`AllInOneModel` from ``model.grad_split`` and attached with :meth:`attach`; it adds
    no parameters, so the protocol's other methods keep their defaults.
    """

    attach_order = 20  # hooks modules by name: after Recon has replaced its layers

    def __init__(self,
                 modules: Optional[Sequence[str]] = None,
                 relation=None,
                 groups: Optional[Sequence[float]] = None,
                 channel_dim: Optional[int] = None):
        if isinstance(modules, str):
            modules = [modules]
        self.module_names = None if modules is None else list(modules)
        self.relation_cfg = relation
        self.group_props = None if groups is None else [float(g) for g in groups]
        self.channel_dim = channel_dim
        self.context: Optional[TaskContext] = None
        self.tasks: List[str] = []
        self.relation: Optional[Tensor] = None
        self.split_modules: Dict[str, nn.Module] = {}
        self._handles = []
        self._masks: Dict[tuple, Optional[Tensor]] = {}
        # relation='affinity': every task trains every group until GradSplitAffinityHook sets R
        self.awaiting_affinity = relation == 'affinity'
        self.affinity_hook = None

    def attach(self, model: nn.Module, tasks: Sequence[str], context: TaskContext) -> 'GradSplit':
        """Resolve the modules and ``R`` for ``tasks`` and register the hooks on ``model``."""
        self.tasks = list(tasks)
        self.context = context
        T = len(self.tasks)
        if self.group_props is not None:
            if len(self.group_props) != T or min(self.group_props) <= 0:
                raise ValueError(f'grad_split.groups: {T} positive proportions expected (tasks {self.tasks}), '
                                 f'got {self.group_props}')
        if self.awaiting_affinity:
            self.relation = torch.ones(T, T, dtype=torch.bool)
        else:
            self.relation = load_relation(self.relation_cfg, self.tasks)
        names = self.module_names
        if names is None:
            names = default_split_modules(model.backbone)
        for raw in _expand_names(model, names):
            on_input = raw.endswith(':input')
            name, module = _resolve_module(model, raw[:-len(':input')] if on_input else raw)
            key = f'{name}:input' if on_input else name
            if key in self.split_modules:
                raise ValueError(f'grad_split.modules names {key} twice')
            if name.split('.')[0] not in ('backbone', 'neck'):
                raise ValueError(f'grad_split.modules: {name} is not in the shared backbone or neck')
            hook = _SplitHook(self, key, on_input)
            if on_input:
                handle = module.register_forward_pre_hook(hook)
            else:
                handle = module.register_forward_hook(hook)
            self._handles.append(handle)
            self.split_modules[key] = module
        self.report(model)
        return self

    def report(self, model: nn.Module) -> Dict[str, float]:
        """Log which share of the shared parameters is routed (printed when the split is attached)."""
        routed, unknown = routed_parameters(self, model)
        params = dict(model.named_parameters())
        shared = [p for n, p in model.named_parameters()
                  if n.split('.')[0] in ('backbone', 'neck') and p.requires_grad]
        n_shared = sum(p.numel() for p in shared)
        n_routed = sum(params[n].numel() for n in routed)
        share = n_routed / n_shared if n_shared else 0.0
        relation = ("'affinity' (all ones until GradSplitAffinityHook's warm-up ends)" if self.awaiting_affinity
                    else self.relation.int().tolist())
        msg = (f'GradSplit: {len(self.split_modules)} split modules ({", ".join(self.split_modules)}), '
               f'relation {relation}; routed parameters (their rows of a group are trained only by the '
               f'tasks allowed): {n_routed:,} of {n_shared:,} shared ({100 * share:.1f}%)')
        if unknown:
            msg += f'; not determined for {unknown} (their producers are not read from the structure)'
        print_log(msg, logger='current')
        return dict(routed=n_routed, shared=n_shared, share=share)

    def remove(self) -> None:
        """Take the hooks off (the model becomes the plain network for training too)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.split_modules = {}

    def set_relation(self, relation) -> None:
        """Replace ``R`` (a matrix, dict or file as in the config)."""
        self.relation = load_relation(relation, self.tasks)
        self._masks.clear()
        self.awaiting_affinity = False

    # ------------------------------------------------------------------ groups and masks
    def group_bounds(self, channels: int) -> List[Tuple[int, int]]:
        """``[(start, end), ...]``: the channel range of each task's group (task order)."""
        T = len(self.tasks)
        if channels < T:
            raise ValueError(f'grad_split: {channels} channels cannot be split into {T} groups')
        props = self.group_props or [1.0] * T
        total = sum(props)
        cuts, acc = [0], 0.0
        for p in props:
            acc += p
            cuts.append(int(round(channels * acc / total)))
        cuts[-1] = channels
        bounds = list(zip(cuts[:-1], cuts[1:]))
        if any(e <= s for s, e in bounds):
            raise ValueError(f'grad_split: groups {self.group_props} leave an empty group of {channels} channels')
        return bounds

    def channel_mask(self, task: str, channels: int) -> Tensor:
        """Bool vector of the ``channels`` task ``task`` may train."""
        t = self.tasks.index(task)
        mask = torch.zeros(channels, dtype=torch.bool)
        for u, (s, e) in enumerate(self.group_bounds(channels)):
            if self.relation[t, u]:
                mask[s:e] = True
        return mask

    def _dim(self, y: Tensor) -> int:
        if self.channel_dim is not None:
            return self.channel_dim % y.dim()
        return 1 if y.dim() in (4, 5) else y.dim() - 1

    def route(self, name: str, task: str, y: Tensor) -> Tensor:
        """``y`` with the backward of the channels ``task`` may not train cut (values unchanged)."""
        if self.awaiting_affinity and self.affinity_hook is None:
            raise RuntimeError("grad_split.relation='affinity' needs custom_hooks=[dict(type="
                               "'GradSplitAffinityHook', warmup_iters=...)] to estimate R during a warm-up; "
                               'or give relation as a matrix or the file such a run wrote')
        if task not in self.tasks or not y.requires_grad:
            return y
        dim = self._dim(y)
        key = (name, task, y.shape[dim], y.dim(), dim, y.device)
        if key not in self._masks:
            mask = self.channel_mask(task, y.shape[dim])
            if bool(mask.all()):
                self._masks[key] = None  # the task trains every channel: nothing to route
            else:
                shape = [1] * y.dim()
                shape[dim] = y.shape[dim]
                self._masks[key] = mask.view(shape).to(y.device)
        mask = self._masks[key]
        if mask is None:
            return y
        return torch.where(mask, y, y.detach())

    def __repr__(self):
        return (f'GradSplit(modules={list(self.split_modules) or self.module_names}, tasks={self.tasks}, '
                f'relation={None if self.relation is None else self.relation.int().tolist()})')

