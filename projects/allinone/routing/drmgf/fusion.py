"""DR-MGF (Sun et al., arXiv 2305.19844): task importances per connection and meta-weighted fusion.

The state and the arithmetic of the method, apart from the loop that schedules it
(:class:`DRMGFTrainLoop`). Defaults follow what the official code (github SYVAE/DR-MGF,
``E1_Multi_task/models/model_segnet_mt_DRMGF.py`` with ``Script/run.sh``) runs; each departure is
an option, named below.

* **Importance variables** ``v_t`` for each chosen shared layer and task: one per (output, input)
  connection of a conv kernel (shape ``(O, I/groups)``), one per output row of a linear layer
  (``(O, 1)``), initialised to the norm of that weight slice. Every conv of a task's own branch
  also gets one, for its task (``task_convs``, below).
* **Gated forward** (training only, first part of training): during the task-dominant pass of task
  ``d`` each chosen layer runs with ``W_eff = W / ||W_slice|| * gate_d`` where
  ``gate_d = sum_u c_u |v_u| / (1 + beta * sum_in |v_u|) ** p / sum_u c_u`` with ``c_d = own_gate``
  (10) and 1 for the others (a local-response-style normalisation over the inputs): the forward
  depends on the importances, so the task losses train them, the dominant task's the most.
* **A task's own convs** (``task_convs``): the official code computes a gate for them too
  (``|v_t| / (1 + beta * sum_in |v_t|) ** p``, their task's importance alone) but its forward does
  not use it (the task layers are called without it), so their importances are never trained;
  at the end of each gated pass it rewrites them as unit-norm slices times that gate, i.e. resets
  each slice's norm to its (LRN-scaled) norm at the start of training, keeping its direction.
  ``'rescale'`` (default) does that; ``'gate'`` runs them gated in the forward (whichever task
  dominates the pass) so that their importances learn; ``None`` leaves them plain.
* **Fusion** of the T task updates ``D_t`` from the common start ``W0``: per connection
  ``W = W0 + sum_t pi_t D_t / sum_t pi_t`` with ``pi_t = |v_t| / sum_in |v_t| * |alpha_t|``;
  ``alpha_t`` (same shape as ``v_t``, init ``alpha_init``) is meta-learned first order on the sum of
  the task losses at the fused weights (``W(alpha)`` is differentiable in ``alpha``), then the
  fusion is written with the meta-learned ``alpha``. A pass recorded with the gate on contributes
  the delta of its *gated* weights (``W_eff(W_end) - W0``). With equal importances and coefficients
  this is the mean of the task updates.
* **Shared norm layers** (``norm_fusion='meta'``, default, as the official code): their weight and
  bias are fused per channel with ``|alpha_t| / sum_u |alpha_u|``, each with its own meta-learned
  coefficients (the official code multiplies the weight's by a per-task importance that is never
  trained, a constant that cancels); ``'equal'``: ``W0 + mean_t D_t``.
* After the freeze point the gates are off, ``v`` is frozen and ``alpha`` is smoothed with an EMA
  after each fusion (``alpha = ema * alpha_before + (1 - ema) * alpha_meta``), as the official code
  does: the fusion itself uses the meta-learned ``alpha``, the EMA sets the next round's start.
  ``ema_before_fusion=True`` fuses with the smoothed ``alpha`` instead.
* The learning rates of ``v`` and ``alpha`` are multiplied by ``lr_gamma`` at each of
  ``lr_milestones`` (fractions of training; the official StepLR halves them at epoch 100 of 200).

Everything else is fused with equal weights: the shared parameters outside the chosen layers
(conv biases; norms with ``norm_fusion='equal'``) take ``W0 + mean_t D_t``; each task's own
parameters take the end of its own pass (``W0 + D_t``; the gated weight for its gated convs); the
shared BN statistics the equal mixture of the T passes' (mean of the means, mean of
``var + mean^2`` minus the squared mean; the official code's importance weights for this mixture
are never trained, so it is the equal mixture there too). Buffers are not reset between the passes
of a round (``reset_buffers=False``, as the official code, which restores only the parameters):
each pass's BN statistics run on from the previous pass's.

Memory, stated because it is the method's price: one copy of the whole model (``W0``), T copies of
the shared parameters (the deltas) and one of the task parameters (each task's pass end), plus
the importance and coefficient tensors and their Adam moments. :meth:`DRMGF.memory_report` gives
the numbers for a model.
"""
from collections import OrderedDict
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ...engine.optim_wrappers.grad_sync import GradSync

EPS = 1e-12
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _build_optimizer(cfg: dict, params: List[Tensor]) -> torch.optim.Optimizer:
    cfg = dict(cfg)
    name = cfg.pop('type', 'Adam')
    cls = getattr(torch.optim, name, None)
    if cls is None:
        raise KeyError(f'drmgf: unknown optimizer type {name!r} (a class of torch.optim)')
    return cls(params, **cfg)


def _slice_norm(w: Tensor, conv: bool) -> Tensor:
    """Norm of each importance slice of ``w``: per (out, in) kernel for a conv, per row otherwise."""
    if conv:
        return w.detach().flatten(2).norm(dim=2)
    return w.detach().flatten(1).norm(dim=1, keepdim=True)


def _expand(x: Tensor, w: Tensor) -> Tensor:
    """An importance-shaped ``(O, I)`` / ``(O, 1)`` tensor broadcast against the weight ``w``."""
    return x.reshape(x.shape + (1, ) * (w.dim() - x.dim()))


class DRMGF(nn.Module):
    """The importances, fusion coefficients and round state of DR-MGF for one ``AllInOneModel``.

    Args:
        model: the (unwrapped) ``AllInOneModel``: ``task_names``, ``parameter_partition()``,
            ``task_loss_weights`` and its ``TaskContext`` are what this reads.
        layers: module names whose conv / linear layers (and, with ``norm_fusion='meta'``, norm
            layers) get importances / coefficients (a name selects every such layer inside it);
            default: every conv / linear / norm layer owning shared weights.
        aux_weight: weight of the other tasks' losses in a task-dominant pass (its own: 1).
        own_gate: factor of the dominant task's importance in the gate (the paper's 10 vs 1).
        lrn_beta, lrn_power: the local-response normalisation of the gate over the inputs.
        importance_optim: optimizer of ``v`` (official: Adam at the model's lr, 1e-4).
        alpha_init: initial fusion coefficient; fusion_optim: optimizer of ``alpha`` (Adam, 0.1).
        alpha_ema: EMA kept on ``alpha`` after the freeze point (0: none).
        ema_before_fusion: False (official): fuse with the meta-learned ``alpha``, then smooth it
            for the next round; True: smooth first and fuse with the smoothed ``alpha``.
        norm_fusion: ``'meta'`` (official): shared norm weights / biases fused per channel by
            meta-learned coefficients; ``'equal'``: the mean of the task updates.
        task_convs: the convs of each task's own branch during the gated part: ``'rescale'``
            (official): at each gated pass end, unit-norm slices times the gate of their (never
            trained) importances; ``'gate'``: gated in the forward too, importances trained;
            ``None``: plain.
        reset_buffers: reset the buffers (BN statistics) to ``W0``'s at every pass start; False
            (official): only the parameters go back, the buffers run on from pass to pass.
        lr_milestones, lr_gamma: multiply the learning rates of ``v`` and ``alpha`` by ``lr_gamma``
            at each milestone (a fraction of training; official: x0.5 at epoch 100 of 200).
    """

    NORM_FUSION = ('meta', 'equal')
    TASK_CONVS = ('rescale', 'gate', None)

    def __init__(self, model: nn.Module, layers: Optional[Sequence[str]] = None, aux_weight: float = 0.5,
                 own_gate: float = 10.0, lrn_beta: float = 1e-4, lrn_power: float = 0.75,
                 importance_optim: dict = dict(type='Adam', lr=1e-4), alpha_init: float = 1e-3,
                 fusion_optim: dict = dict(type='Adam', lr=0.1), alpha_ema: float = 0.9,
                 ema_before_fusion: bool = False, norm_fusion: str = 'meta', task_convs: Optional[str] = 'rescale',
                 reset_buffers: bool = False, lr_milestones: Sequence[float] = (0.5, ), lr_gamma: float = 0.5):
        super().__init__()
        if not 0 <= alpha_ema < 1:
            raise ValueError(f'drmgf.alpha_ema must be in [0, 1), got {alpha_ema}')
        if own_gate <= 0 or aux_weight < 0:
            raise ValueError(f'drmgf: own_gate must be > 0 and aux_weight >= 0 (got {own_gate}, {aux_weight})')
        if task_convs not in self.TASK_CONVS:
            raise ValueError(f'drmgf.task_convs must be one of {self.TASK_CONVS}, got {task_convs!r}')
        if norm_fusion not in self.NORM_FUSION:
            raise ValueError(f'drmgf.norm_fusion must be one of {self.NORM_FUSION}, got {norm_fusion!r}')
        milestones = tuple(sorted(float(m) for m in (lr_milestones or ())))
        if any(not 0 <= m <= 1 for m in milestones) or lr_gamma <= 0:
            raise ValueError(f'drmgf.lr_milestones must be fractions of training in [0, 1] and lr_gamma > 0 '
                             f'(got {lr_milestones}, {lr_gamma})')
        self.tasks = list(model.task_names)
        self.aux_weight, self.own_gate = float(aux_weight), float(own_gate)
        self.lrn_beta, self.lrn_power, self.alpha_ema = float(lrn_beta), float(lrn_power), float(alpha_ema)
        self.ema_before_fusion, self.norm_fusion = bool(ema_before_fusion), norm_fusion
        self.reset_buffers = bool(reset_buffers)
        self.lr_milestones, self.lr_gamma = milestones, float(lr_gamma)
        self._ctx = model.task_context
        part = model.parameter_partition()
        shared_ids = {id(p) for p in part['shared']}
        self._owner = {id(p): g for g, ps in part.items() for p in ps}
        self.layer_names = self._select_layers(model, layers, shared_ids)
        self.norm_names = self._select_norms(model, layers, shared_ids) if norm_fusion == 'meta' else []
        self.task_convs = task_convs
        self.task_layers: Dict[str, str] = OrderedDict()  # a task's own conv -> its task
        if task_convs is not None:
            for n, m in model.named_modules():
                if isinstance(m, _CONV) and getattr(m, 'weight', None) is not None:
                    owner = self._owner.get(id(m.weight))
                    if owner in self.tasks and m.weight.requires_grad:
                        self.task_layers[n] = owner
        modules = dict(model.named_modules())
        self._modules_by_name = OrderedDict(
            (n, modules[n]) for n in self.layer_names + list(self.task_layers) + self.norm_names)
        self._layer_tasks = {n: list(self.tasks) for n in self.layer_names}
        self._layer_tasks.update({n: [t] for n, t in self.task_layers.items()})
        self._fused_keys = {f'{n}.weight': n for n in self.layer_names}  # state key -> chosen shared layer
        self._task_keys = {f'{n}.weight': n for n in self.task_layers}   # state key -> a task's own conv
        self.norm_keys = OrderedDict()                                    # state key -> (norm, param name)
        for n in self.norm_names:
            for pn, p in modules[n].named_parameters(recurse=False):
                if id(p) in shared_ids:
                    self.norm_keys[f'{n}.{pn}'] = (n, pn)
        # v and alpha: ParameterDicts keyed '<task>/<layer with dots as colons>'
        self.importance = nn.ParameterDict()
        self.alpha = nn.ParameterDict()
        for n in self._layer_tasks:
            m = modules[n]
            norm = _slice_norm(m.weight, isinstance(m, _CONV)).float()
            for t in self._layer_tasks[n]:
                self.importance[self._key(t, n)] = nn.Parameter(norm.clone())
                if n not in self.task_layers:
                    self.alpha[self._key(t, n)] = nn.Parameter(torch.full_like(norm, float(alpha_init)))
        for key, (n, pn) in self.norm_keys.items():
            p = modules[n]._parameters[pn]
            for t in self.tasks:
                self.alpha[self._key(t, key)] = nn.Parameter(torch.full(p.shape, float(alpha_init)))
        self.importance_optimizer = _build_optimizer(importance_optim, list(self.importance.values()))
        self.fusion_optimizer = _build_optimizer(fusion_optim, list(self.alpha.values()))
        self._base_lrs = [[g['lr'] for g in opt.param_groups]
                          for opt in (self.importance_optimizer, self.fusion_optimizer)]
        self.mode: Optional[str] = None     # None | 'gate' | 'fuse'
        self.dominant: Optional[str] = None
        self.start: Optional[Dict[str, Tensor]] = None        # W0: every parameter and buffer
        self.pass_ends: Dict[str, Dict[str, Tensor]] = OrderedDict()
        self._handles = []
        for n, m in self._modules_by_name.items():
            if n in self.task_layers and task_convs != 'gate':
                continue  # 'rescale': their weights are rewritten at the pass end only
            self._handles.append(m.register_forward_pre_hook(self._pre_hook(n)))
            self._handles.append(m.register_forward_hook(self._post_hook, always_call=True))

    # ------------------------------------------------------------------ layers
    @staticmethod
    def _key(task: str, layer: str) -> str:
        return f"{task}/{layer.replace('.', ':')}"

    @staticmethod
    def _in_scope(name: str, layers: Sequence[str]) -> bool:
        return any(n == s or n.startswith(s + '.') for s in layers for n in (name, name.removeprefix('backbone.')))

    @classmethod
    def _select_layers(cls, model, layers, shared_ids) -> List[str]:
        found = [n for n, m in model.named_modules()
                 if isinstance(m, _CONV + (nn.Linear, )) and getattr(m, 'weight', None) is not None
                 and id(m.weight) in shared_ids]
        if layers is None:
            chosen = found
        else:
            if isinstance(layers, str):
                layers = [layers]
            chosen = []
            for name in layers:
                hits = [n for n in found if cls._in_scope(n, [name])]
                if not hits:
                    raise KeyError(f'drmgf.layers: {name!r} names no shared conv / linear layer of the model '
                                   f'(e.g. {found[:3]})')
                chosen += [h for h in hits if h not in chosen]
        if not chosen:
            raise ValueError('drmgf: the model has no shared conv / linear layer to fuse')
        return chosen

    @classmethod
    def _select_norms(cls, model, layers, shared_ids) -> List[str]:
        """Shared norm layers (BatchNorm, GroupNorm, LayerNorm, ...) with shared affine parameters."""
        if isinstance(layers, str):
            layers = [layers]
        out = []
        for n, m in model.named_modules():
            if not isinstance(m, _NORM):
                continue
            if not any(id(p) in shared_ids for p in m.parameters(recurse=False)):
                continue
            if layers is None or cls._in_scope(n, layers):
                out.append(n)
        return out

    def init_importances(self, model: nn.Module) -> None:
        """``v_t`` = the norm of each weight slice, for every task (at the start of training, once the
        pretrained / ``load_from`` weights are in)."""
        with torch.no_grad():
            for n, tasks in self._layer_tasks.items():
                m = self._modules_by_name[n]
                norm = _slice_norm(m.weight, isinstance(m, _CONV))
                for t in tasks:
                    self.importance[self._key(t, n)].copy_(norm)

    # ------------------------------------------------------------------ gated and fused weights
    def gate(self, layer: str, dominant: Optional[str]) -> Tensor:
        """``gate_d`` of a layer: the own task's importance ``own_gate`` times the others' (a task's
        own conv: its task's importance alone)."""
        num, den = 0., 0.
        for t in self._layer_tasks[layer]:
            v = self.importance[self._key(t, layer)].abs()
            c = self.own_gate if t == dominant else 1.0
            num = num + c * v / (1 + self.lrn_beta * v.sum(dim=1, keepdim=True)) ** self.lrn_power
            den += c
        return num / den

    def effective_weight(self, layer: str, weight: Tensor, dominant: Optional[str]) -> Tensor:
        """The weight the gated forward uses: unit-norm slices scaled by the gate."""
        conv = isinstance(self._modules_by_name[layer], _CONV)
        norm = weight.flatten(2).norm(dim=2) if conv else weight.flatten(1).norm(dim=1, keepdim=True)
        g = self.gate(layer, dominant)
        return weight / _expand(norm.clamp_min(EPS), weight) * _expand(g.to(weight.dtype), weight)

    def fusion_coefficients(self, layer: str, tasks: Sequence[str]) -> List[Tensor]:
        """``pi_t = |v_t| / sum_in |v_t| * |alpha_t|`` (v detached: only alpha is meta-learned)."""
        out = []
        for t in tasks:
            v = self.importance[self._key(t, layer)].detach().abs()
            out.append(v / (v.sum(dim=1, keepdim=True) + EPS) * self.alpha[self._key(t, layer)].abs())
        return out

    def _combine(self, key: str, pis: List[Tensor], tasks: Sequence[str]) -> Tensor:
        start = self.start[key]
        total = sum(pis)
        upd = sum(_expand(pi, start).to(start.dtype) * self.pass_ends[t][key] for t, pi in zip(tasks, pis))
        return start + upd / _expand(total, start).to(start.dtype).clamp_min(EPS)

    def fused_weight(self, layer: str) -> Tensor:
        """``W0 + sum_t pi_t D_t / sum_t pi_t`` of a chosen layer from the recorded passes."""
        tasks = list(self.pass_ends)
        return self._combine(f'{layer}.weight', self.fusion_coefficients(layer, tasks), tasks)

    def fused_norm_param(self, key: str) -> Tensor:
        """``W0 + sum_t |alpha_t| D_t / sum_t |alpha_t|`` per channel of a shared norm parameter."""
        tasks = list(self.pass_ends)
        return self._combine(key, [self.alpha[self._key(t, key)].abs() for t in tasks], tasks)

    def _pre_hook(self, layer: str):
        task_layer = layer in self.task_layers
        norm_params = [pn for k, (n, pn) in self.norm_keys.items() if n == layer]

        def hook(module, args):
            saved = {}
            # a training forward: the shared layers run inside the task context's training forward;
            # a task's head runs after it (outside the context), so its convs check train mode instead
            training = module.training if task_layer else self._ctx.train
            if self.mode == 'gate' and not norm_params and training and torch.is_grad_enabled():
                saved['weight'] = module._parameters['weight']
                module._parameters['weight'] = self.effective_weight(layer, saved['weight'], self.dominant)
            elif self.mode == 'fuse' and not task_layer:
                for pn in norm_params or ['weight']:
                    saved[pn] = module._parameters[pn]
                    module._parameters[pn] = (self.fused_norm_param(f'{layer}.{pn}') if norm_params
                                              else self.fused_weight(layer))
            if saved:
                module.__dict__['_drmgf_saved'] = saved
        return hook

    @staticmethod
    def _post_hook(module, args, output):
        saved = module.__dict__.pop('_drmgf_saved', None)
        if saved:
            module._parameters.update(saved)
        return output

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ------------------------------------------------------------------ rounds
    def set_progress(self, fraction: float) -> float:
        """Learning rates of ``v`` and ``alpha`` for a round starting at ``fraction`` of training:
        the configured ones times ``lr_gamma`` per milestone reached. Returns the factor."""
        factor = self.lr_gamma ** sum(1 for m in self.lr_milestones if fraction >= m)
        for opt, base in zip((self.importance_optimizer, self.fusion_optimizer), self._base_lrs):
            for group, lr in zip(opt.param_groups, base):
                group['lr'] = lr * factor
        return factor

    def begin_round(self, model: nn.Module) -> None:
        """Remember ``W0``, the common start of the round's task-dominant passes."""
        self.start = OrderedDict((n, t.detach().clone()) for n, t in model.state_dict(keep_vars=True).items())
        self.pass_ends = OrderedDict()

    @contextmanager
    def task_pass(self, model: nn.Module, task: str, gated: bool) -> Iterator[None]:
        """One step of ``task``'s dominant pass: its loss at 1, the others' at ``aux_weight``;
        with ``gated``, the gated forward of ``task``."""
        base = dict(model.task_loss_weights)
        model.task_loss_weights = {t: w * (1.0 if t == task else self.aux_weight) for t, w in base.items()}
        self.mode, self.dominant = ('gate' if gated else None), task
        try:
            yield
        finally:
            model.task_loss_weights = base
            self.mode, self.dominant = None, None

    def restore_start(self, model: nn.Module) -> None:
        """Back to ``W0`` for the next task's pass: the parameters, and the buffers too with
        ``reset_buffers`` (the official code restores the parameters only)."""
        params = {n for n, _ in model.named_parameters()}
        with torch.no_grad():
            for n, t in model.state_dict(keep_vars=True).items():
                if self.reset_buffers or n in params:
                    t.copy_(self.start[n])

    def end_pass(self, model: nn.Module, task: str, gated: bool) -> None:
        """Keep what the fusion needs of ``task``'s pass: the deltas of the shared parameters (of the
        gated weights for the chosen layers while gating), ``task``'s own parameters (its gated
        convs' gated weights) and the buffers."""
        params = dict(model.named_parameters())
        end = OrderedDict()
        with torch.no_grad():
            for n, t in model.state_dict(keep_vars=True).items():
                owner = self._owner.get(id(params[n])) if n in params else None
                if owner == 'shared':
                    w = t.detach()
                    if gated and n in self._fused_keys:
                        w = self.effective_weight(self._fused_keys[n], w, task)
                    end[n] = w - self.start[n]
                elif owner == task:
                    w = t.detach()
                    if gated and n in self._task_keys:
                        w = self.effective_weight(self._task_keys[n], w, task)
                    end[n] = w.clone()
                elif n not in params and (not n.startswith('tasks.') or n.startswith(f'tasks.{task}.')):
                    end[n] = t.detach().clone()  # shared buffers (mixed at the fusion) and this task's own
        self.pass_ends[task] = end

    def _apply_equal_fusion(self, model: nn.Module) -> None:
        """Everything but the coefficient-fused weights: mean deltas, own pass ends, mixed BN stats."""
        params = dict(model.named_parameters())
        ends = self.pass_ends
        tasks = list(ends)
        state = model.state_dict(keep_vars=True)
        with torch.no_grad():
            for n, t in state.items():
                if n in params:
                    owner = self._owner.get(id(params[n]))
                    if owner == 'shared':
                        if n not in self._fused_keys and n not in self.norm_keys:
                            t.copy_(self.start[n] + sum(ends[u][n] for u in tasks) / len(tasks))
                    elif owner in ends:
                        t.copy_(ends[owner][n])
                    continue
                if n.startswith('tasks.'):
                    own = next((u for u in tasks if n.startswith(f'tasks.{u}.')), None)
                    if own is not None:
                        t.copy_(ends[own][n])
                    continue
                if n.endswith('running_mean') or n.endswith('running_var'):
                    continue
                if t.is_floating_point():
                    t.copy_(sum(ends[u][n] for u in tasks) / len(tasks))
                else:
                    t.copy_(ends[tasks[-1]][n])
            for n in state:  # BN statistics: the equal mixture of the passes' distributions
                if not n.endswith('running_var') or n.startswith('tasks.'):
                    continue
                m = n[:-len('running_var')] + 'running_mean'
                if m not in state:
                    continue
                mean = sum(ends[u][m] for u in tasks) / len(tasks)
                second = sum(ends[u][n] + ends[u][m] ** 2 for u in tasks) / len(tasks)
                state[m].copy_(mean)
                state[n].copy_((second - mean ** 2).clamp_min(0))

    def _smooth_alpha(self, before: List[Tensor]) -> None:
        with torch.no_grad():
            for a, b in zip(self.alpha.values(), before):
                a.mul_(1 - self.alpha_ema).add_(b, alpha=self.alpha_ema)

    def fuse(self, model: nn.Module, meta_batches: Iterator[Dict[str, dict]], meta_iters: int,
             ema: bool, sync: GradSync = GradSync()) -> Dict[str, float]:
        """End of a round: meta-learn ``alpha`` for ``meta_iters`` batches, then write the fused
        weights into ``model`` (with ``ema``: smooth ``alpha`` afterwards, or before with
        ``ema_before_fusion``). Returns the mean meta loss (NaN without meta iterations)."""
        if not self.pass_ends:
            raise RuntimeError('DRMGF.fuse: no task pass was recorded in this round')
        self.restore_start(model)  # a task without a pass in a short last round keeps W0
        self._apply_equal_fusion(model)
        before = [a.detach().clone() for a in self.alpha.values()] if ema and self.alpha_ema else None
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        losses = []
        self.mode = 'fuse'
        try:
            for _ in range(meta_iters):
                batch = next(meta_batches)
                self.fusion_optimizer.zero_grad(set_to_none=True)
                total = 0.
                for task, b in batch.items():
                    if task not in self.tasks or b is None:
                        continue
                    loss, _ = model.task_loss(task, b)
                    loss.backward()
                    total += float(loss.detach())
                sync.average(self.alpha.values())
                self.fusion_optimizer.step()
                losses.append(total)
        finally:
            self.mode = None
            for p in params:
                p.requires_grad_(True)
        if before is not None and self.ema_before_fusion:
            self._smooth_alpha(before)
        with torch.no_grad():
            state = model.state_dict(keep_vars=True)
            for key, layer in self._fused_keys.items():
                state[key].copy_(self.fused_weight(layer))
            for key in self.norm_keys:
                state[key].copy_(self.fused_norm_param(key))
        if before is not None and not self.ema_before_fusion:
            self._smooth_alpha(before)  # the official order: the EMA only sets the next round's start
        self.start, self.pass_ends = None, OrderedDict()
        return dict(meta_loss=sum(losses) / len(losses) if losses else float('nan'))

    def step_importances(self, sync: GradSync = GradSync()) -> None:
        """One optimizer step of ``v`` on the gradients the gated forward left on it (averaged over the
        ranks by ``sync``, the optim wrapper's)."""
        sync.average(self.importance.values())
        self.importance_optimizer.step()
        self.importance_optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ reporting and state
    def importance_shares(self) -> Dict[str, float]:
        """Per task: its share of the summed importance over every connection of the chosen shared layers."""
        totals = {t: sum(float(self.importance[self._key(t, n)].detach().abs().sum()) for n in self.layer_names)
                  for t in self.tasks}
        s = sum(totals.values()) or 1.0
        return {t: v / s for t, v in totals.items()}

    def memory_report(self, model: nn.Module) -> Dict[str, float]:
        """Megabytes DR-MGF holds besides the model and its optimizer (fp32 sizes)."""
        mb = 1 / 2 ** 20
        part = model.parameter_partition()
        shared = sum(p.numel() * p.element_size() for p in part['shared'])
        own = sum(p.numel() * p.element_size() for g, ps in part.items() if g != 'shared' for p in ps)
        whole = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        coef = sum(v.numel() * v.element_size() for v in list(self.importance.values()) + list(self.alpha.values()))
        return dict(start_copy_mb=whole * mb, task_deltas_mb=len(self.tasks) * shared * mb + own * mb,
                    importance_and_alpha_mb=coef * mb, optimizer_moments_mb=2 * coef * mb)

    def _layout(self) -> dict:
        return dict(tasks=self.tasks, layers=self.layer_names, task_layers=list(self.task_layers),
                    norms=list(self.norm_keys))

    def state_dict_for_checkpoint(self) -> dict:
        return dict(importance={k: v.detach().clone() for k, v in self.importance.items()},
                    alpha={k: v.detach().clone() for k, v in self.alpha.items()},
                    importance_optimizer=self.importance_optimizer.state_dict(),
                    fusion_optimizer=self.fusion_optimizer.state_dict(),
                    start=self.start, pass_ends=dict(self.pass_ends), **self._layout())

    def load_checkpoint_state(self, state: dict) -> None:
        want = self._layout()
        got = {k: list(state.get(k, [])) for k in want}
        if got != want:
            diff = [k for k in want if got[k] != want[k]]
            raise ValueError(f"the checkpoint's DR-MGF state is for other {', '.join(diff)} than this config "
                             f"(checkpoint: {len(got['layers'])} shared layers, {len(got['task_layers'])} task "
                             f"convs, {len(got['norms'])} norm parameters, tasks {got['tasks']}; config: "
                             f"{len(want['layers'])}, {len(want['task_layers'])}, {len(want['norms'])}, "
                             f"tasks {want['tasks']})")
        with torch.no_grad():
            for k, v in state['importance'].items():
                self.importance[k].copy_(v)
            for k, v in state['alpha'].items():
                self.alpha[k].copy_(v)
        self.importance_optimizer.load_state_dict(state['importance_optimizer'])
        self.fusion_optimizer.load_state_dict(state['fusion_optimizer'])
        self.start = state.get('start')
        self.pass_ends = OrderedDict(state.get('pass_ends') or {})

