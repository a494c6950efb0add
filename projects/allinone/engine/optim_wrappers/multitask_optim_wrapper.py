"""An OptimWrapper that receives each task's loss separately and combines their gradients."""
import logging
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ...registry import OPTIM_WRAPPERS
from ..aggregators.base import GradAggregator, build_aggregator, tensors_norm
from .grad_sync import GradSync

#: ``hook(task, shared, own)``: called once per task and micro-step when its gradients are final (after
#: the data-parallel all-reduce), while ``.grad`` of ``shared`` + ``own`` holds that task's gradient alone
#: (in the loss-scaled space under AMP). Observers read it there; they must not change it.
TaskGradHook = Callable[[str, List[nn.Parameter], List[nn.Parameter]], None]


def mmengine_amp_available() -> bool:
    """Whether mmengine's ``AmpOptimWrapper`` may be built here: the device check its ``__init__``
    asserts (CUDA, NPU, MLU or MUSA), read from mmengine's module so the two cannot disagree."""
    from mmengine.optim.optimizer import amp_optimizer_wrapper as amp
    return bool(amp.is_cuda_available() or amp.is_npu_available() or amp.is_mlu_available()
                or amp.is_musa_available())


def _add_scaled(acc: List[Optional[Tensor]], grads: List[Optional[Tensor]], factor: float) -> None:
    """``acc += factor * grads`` in place; a missing ``acc`` entry takes over the gradient tensor."""
    both = [i for i, (a, g) in enumerate(zip(acc, grads)) if a is not None and g is not None]
    if both:
        torch._foreach_add_([acc[i] for i in both], [grads[i] for i in both], alpha=factor)
    for i, (a, g) in enumerate(zip(acc, grads)):
        if a is None and g is not None:
            acc[i] = g.mul_(factor)


@dataclass
class CombinedStep:
    """One micro-step's aggregation: the combined shared gradient (in the ``.grad`` space), and what
    the log shows of it."""
    tasks: List[str]
    grads: List[Optional[Tensor]]   # per shared parameter
    weights: Tensor                 # the weight of each task's shared gradient in the combination
    own_scales: Tensor             # the factor on each task's own-parameter gradient
    norms: Tensor                   # each task's shared gradient norm (unscaled, before aggregation)
    losses: Tensor
    cos: Optional[Tensor] = None    # pairwise cosines of the task gradients, on stats updates


@OPTIM_WRAPPERS.register_module()
class MultiTaskOptimWrapper(OptimWrapper):
    """Per-task backward passes, a pluggable aggregation of the shared gradients, then one step.

    The model (``AllInOneModel.train_step``) calls :meth:`backward_task` once per task with that
    task's loss, then :meth:`update_tasks`. For every task the wrapper measures the norm of its
    gradient on the shared parameters and on its own parameters, skips it (with a warning) if
    either is NaN/Inf, and hands it to the ``aggregator``:

    * a streaming aggregator (``TaskScalingAggregator``: Sum, TBGC) is accumulated on the fly into one
      buffer the size of the shared parameters: extra memory over a vanilla step is one
      backbone-sized buffer, never T copies;
    * any other aggregator gets the ``(T, n)`` matrix of task gradients.

    Every ``stats_interval`` updates the matrix path is taken even for streaming aggregators (same
    result), so on those updates the ``(T, n)`` matrix is held, to log the pairwise cosine
    similarities of the task gradients (``cos.{a}-{b}``, with ``cos.iter``: the 1-based iteration
    they were computed at; between two such updates the log repeats them, and ``cos.iter`` says how
    old they are). Logged each iteration per task ``{task}.grad_norm`` (shared, before aggregation),
    ``{task}.grad_norm_agg`` (its norm as it enters the sum), ``{task}.weight`` and, once a task was
    skipped, ``{task}.nonfinite_skips``; ``aggregator.fallbacks`` for methods with a solver.

    The global ``clip_grad`` of :class:`OptimWrapper` still applies to the combined gradient in
    :meth:`step` (the vanilla baseline: ``SumAggregator`` + ``clip_grad=dict(max_norm=0.1)``).
    With ``accumulative_counts=k`` each micro-step is aggregated on its own and the update is the
    mean of the k aggregated gradients.

    Data parallel: the wrapper calls its ``grad_sync`` (:class:`GradSync`, a do-nothing one in one
    process) at fixed points; ``MultiTaskDistributedDataParallel`` hands it a ``TaskGradSync`` with
    :meth:`use_grad_sync` (exact mode: each bucket of a task's gradients is all-reduced as soon as the
    backward has produced it, and waited for at the next task's ``backward_task`` or at
    :meth:`update_tasks`; approximate mode: the norms and the combined gradient are averaged).

    Observers of the per-task gradients (the Recon search, statistics) register with
    :meth:`register_task_grad_hook` and are called when each task's gradient is final.

    The non-finite skip counters and the aggregator's state are part of :meth:`state_dict` (so of
    every checkpoint).

    Args:
        optimizer: the optimizer.
        aggregator: config or instance of a :class:`GradAggregator` (default ``SumAggregator``).
        streaming: force the matrix path with ``False`` (testing, non-linear methods); default: the
            aggregator's own ``streaming``.
        stats_interval: compute the task-gradient cosines every this many updates (0: never).
    """

    def __init__(self, optimizer, aggregator: Union[dict, GradAggregator] = dict(type='SumAggregator'),
                 streaming: Optional[bool] = None, stats_interval: int = 50, **kwargs):
        OptimWrapper.__init__(self, optimizer=optimizer, **kwargs)
        self._init_multitask(aggregator, streaming, stats_interval)

    # ---------------------------------------------------------------- set-up
    def _init_multitask(self, aggregator, streaming, stats_interval):
        self.aggregator = build_aggregator(aggregator) if isinstance(aggregator, dict) else aggregator
        if not isinstance(self.aggregator, GradAggregator):
            raise TypeError(f'optim_wrapper.aggregator must build a GradAggregator, got {type(self.aggregator)}')
        self.gradient_samples = int(getattr(self.aggregator, 'gradient_samples', 1))
        if streaming and not self.aggregator.streaming:
            raise ValueError(f'{type(self.aggregator).__name__} needs every task gradient at once; '
                             'it cannot run with streaming=True')
        self.streaming = self.aggregator.streaming if streaming is None else bool(streaming)
        self.stats_interval = int(stats_interval)
        self._shared: Optional[List[nn.Parameter]] = None
        self._own: Dict[str, List[nn.Parameter]] = {}
        self.skipped = Counter()          # task -> number of non-finite steps skipped
        self.grad_sync: GradSync = GradSync()  # one process; data parallel: use_grad_sync
        self._task_grad_hooks: Dict[int, TaskGradHook] = OrderedDict()
        self._pending_task = None         # (task, loss value) whose gradients are still being reduced
        self.last_stats: Dict[str, float] = {}
        self._contributed = False         # any finite task gradient since the last step
        self._reset_pass()

    def use_grad_sync(self, sync: GradSync) -> None:
        """Synchronise the task gradients with ``sync`` from now on (data parallel; set once)."""
        if not isinstance(sync, GradSync):
            raise TypeError(f'grad_sync must be a GradSync, got {type(sync).__name__}')
        if sync is self.grad_sync:
            return
        if type(self.grad_sync) is not GradSync:
            raise RuntimeError('this optim wrapper is already synchronised by another data-parallel wrapper')
        self.grad_sync = sync

    def register_task_grad_hook(self, hook: TaskGradHook) -> RemovableHandle:
        """Call ``hook(task, shared, own)`` whenever a task's gradient is final (see ``TaskGradHook``);
        ``handle.remove()`` unregisters it."""
        handle = RemovableHandle(self._task_grad_hooks)
        self._task_grad_hooks[handle.id] = hook
        return handle

    @property
    def task_grad_hooks(self) -> List[TaskGradHook]:
        """The registered per-task gradient hooks, in call order."""
        return list(self._task_grad_hooks.values())

    @property
    def is_bound(self) -> bool:
        return self._shared is not None

    def bind(self, partition: Dict[str, List[nn.Parameter]]) -> None:
        """Learn which parameters are shared and which belong to each task.

        ``partition`` is ``{'shared': [params], task: [params], ...}`` (``parameter_partition()``
        of the model); every trainable parameter must appear exactly once.
        """
        if 'shared' not in partition:
            raise KeyError("parameter partition needs a 'shared' entry")
        seen = {}
        for group, params in partition.items():
            for p in params:
                if id(p) in seen:
                    raise ValueError(f'a parameter belongs to both {seen[id(p)]!r} and {group!r}')
                seen[id(p)] = group
        opt_params = {id(p) for g in self.optimizer.param_groups for p in g['params'] if p.requires_grad}
        outside = len(set(seen) - opt_params)
        if outside:
            print_log(f'{outside} parameters of the partition are not in the optimizer: they are never '
                      'updated', logger='current', level=logging.WARNING)
        self._shared = list(partition['shared'])
        self._own = OrderedDict((t, list(ps)) for t, ps in partition.items() if t != 'shared')
        self.aggregator.bind(list(self._own))

    def optim_context(self, model: nn.Module):
        """mmengine's per-step context (autocast, accumulation), entered with the model being trained: an
        unbound wrapper binds itself here to ``model.parameter_partition()`` (a wrapper built by hand may
        call :meth:`bind` itself first)."""
        if not self.is_bound:
            partition = getattr(model, 'parameter_partition', None)
            if partition is None:
                raise TypeError(f'{type(self).__name__} needs the model\'s parameter partition: '
                                f'{type(model).__name__} has no parameter_partition(); call bind(partition) first')
            self.bind(partition())
        return super().optim_context(model)

    def _reset_pass(self):
        self._tasks_seen: List[str] = []                        # one entry per backward (a task k times
                                                                # with k gradient samples)
        self._acc: Optional[List[Optional[Tensor]]] = None     # streaming: sum_t f_t g_t (scaled space)
        self._rows: List[Tensor] = []                           # matrix path: flat unscaled g_t
        self._row_tasks: List[str] = []                         # the task of each row
        self._row_slots: List[int] = []                         # and its row of self._matrix
        self._matrix: Optional[Tensor] = None                   # (T * samples, n) storage of those rows
        self._shared_stash: Optional[List[Optional[Tensor]]] = None
        self._own_stash: Dict[str, List[Optional[Tensor]]] = {}
        self._stats = OrderedDict()                             # task -> [(loss, norm, own_norm, factor)]
        self._dropped = set()                                   # tasks skipped this micro-step

    # ---------------------------------------------------------------- backward
    def _backward(self, loss: Tensor) -> None:
        loss.backward()

    def _grad_scale(self) -> float:
        """Factor between ``.grad`` and the true gradient (the AMP loss scale; 1 in fp32)."""
        return 1.0

    def _stats_due(self) -> bool:
        """This update logs the pairwise cosines of the task gradients (every ``stats_interval``)."""
        n = self._inner_count // self._accumulative_counts
        return self.stats_interval > 0 and n % self.stats_interval == 0

    def _matrix_pass(self) -> bool:
        """Matrix path for this update: non-streaming aggregators, or a stats update."""
        if not self.streaming:
            return True
        if not self.grad_sync.exact:
            return False  # approximate data parallel: the rows would be rank-local gradients
        return self._stats_due()

    def _next_row(self, shared: List[nn.Parameter]) -> Tuple[int, Tensor]:
        """The next task's row of the ``(T, n)`` gradient matrix, allocated once per micro-step.

        Writing each task's flattened gradient straight into its row saves a concatenated copy per
        task and the stack of the rows (measurable at T x backbone size on every step).
        """
        if self._matrix is None:
            n = sum(p.numel() for p in shared)
            ref = shared[0] if shared else None
            dtype = torch.float64 if ref is not None and ref.dtype == torch.float64 else torch.float32
            self._matrix = torch.empty((len(self._own) * self.gradient_samples, n), dtype=dtype,
                                       device=ref.device if ref is not None else 'cpu')
        slot = next(i for i in range(len(self._matrix)) if i not in self._row_slots)  # (a skipped task frees its)
        return slot, self._matrix[slot]

    def backward_task(self, task: str, loss: Tensor) -> None:
        """Backward of one task's loss; keeps its shared gradient apart from the other tasks'.

        A task without a batch in this step is left out of the step (no call); under data parallel
        every rank must then leave it out (``MultiTaskDistributedDataParallel`` checks).
        """
        self._check_task_call(task, loss)
        self._finish_pending()  # the previous task's gradients, once final (data parallel)
        shared, own = self._shared, self._own[task]
        self._stash_grads(task, shared, own)
        loss_value = float(loss.detach())
        self.grad_sync.before_task_backward(task, shared, own, loss_value)
        self._backward(loss)
        self.grad_sync.end_task_backward()  # launch what the backward left, before any other collective
        self._tasks_seen.append(task)
        self._pending_task = (task, loss_value)
        if not self.grad_sync.overlaps:
            self._finish_pending()

    def _check_task_call(self, task: str, loss: Optional[Tensor]) -> None:
        if loss is None:
            raise ValueError(f'task {task!r}: no loss (loss=None); a task without a batch in this step is left '
                             'out of it (every rank must draw the same tasks under data parallel)')
        if not self.is_bound:
            raise RuntimeError('MultiTaskOptimWrapper.bind(model.parameter_partition()) must be called '
                               'before backward_task')
        if task not in self._own:
            raise KeyError(f'unknown task {task!r}; the wrapper was bound to {list(self._own)}')
        seen = self._tasks_seen.count(task)
        if seen >= self.gradient_samples:
            raise RuntimeError(f'task {task!r} was backed {seen + 1} times in one iteration; the aggregator takes '
                               f'{self.gradient_samples} gradient sample(s) per task')

    def _stash_grads(self, task: str, shared: List[nn.Parameter], own: List[nn.Parameter]) -> None:
        """Put the gradients already in ``.grad`` aside (earlier micro-steps of an accumulation), so that
        the task's backward leaves its own gradient alone there. A later gradient sample of the task adds
        to its own parameters' ``.grad`` (the parts' sum; the aggregator's ``own_scales`` averages it)."""
        if self._shared_stash is None:  # running total of earlier micro-steps (None in a plain step)
            self._shared_stash = [p.grad for p in shared]
        if task not in self._own_stash:
            self._own_stash[task] = [p.grad for p in own]
            for p in own:
                p.grad = None
        for p in shared:
            p.grad = None

    def _finish_pending(self) -> None:
        """Measure, check and aggregate the last backed task, once its gradients are final."""
        if self._pending_task is None:
            return
        task, loss_value = self._pending_task
        self._pending_task = None
        shared, own = self._shared, self._own[task]
        loss_value = self.grad_sync.after_task_backward(task, shared, own, loss_value)
        if task in self._dropped:  # an earlier gradient sample of the task was non-finite
            for p in shared:
                p.grad = None
            for p, g in zip(own, self._own_stash.pop(task)):
                p.grad = g
            return
        for hook in self.task_grad_hooks:
            hook(task, shared, own)
        inv = 1.0 / self._grad_scale()
        g_shared = [p.grad for p in shared]
        norm, own_norm = tensors_norm(g_shared) * inv, tensors_norm([p.grad for p in own]) * inv
        norm, own_norm, loss_value = self.grad_sync.task_stats(task, norm, own_norm, loss_value)
        for p in shared:  # the shared .grad is rebuilt in update_tasks
            p.grad = None
        if not (math.isfinite(norm) and math.isfinite(own_norm)):
            self._skip_task(task, own, norm, own_norm, loss_value)
            return
        local = self.grad_sync.local_weight(task)
        if self._matrix_pass():
            self._add_row(task, shared, g_shared, inv * local)
            factor = float('nan')
        else:
            factor = self.aggregator.task_factor(norm, own_norm, loss_value, task)
            self._accumulate(g_shared, factor * local)
        self._stats.setdefault(task, []).append((loss_value, norm, own_norm, factor))

    def _skip_task(self, task: str, own: List[nn.Parameter], norm: float, own_norm: float,
                   loss_value: float) -> None:
        """A non-finite task gradient: counted, logged, left out of this step (its own parameters keep
        their earlier micro-steps' gradients)."""
        self.skipped[task] += 1
        self._dropped.add(task)
        self._stats.pop(task, None)  # its earlier gradient samples, if any
        keep = [i for i, t in enumerate(self._row_tasks) if t != task]
        self._rows = [self._rows[i] for i in keep]
        self._row_tasks = [self._row_tasks[i] for i in keep]
        self._row_slots = [self._row_slots[i] for i in keep]
        print_log(f'task {task!r}: non-finite gradient (shared norm {norm}, own norm {own_norm}, '
                  f'loss {loss_value}) at update {self._inner_count}; this task is skipped for this '
                  f'step (skipped {self.skipped[task]} times so far)', logger='current',
                  level=logging.WARNING)
        self._on_nonfinite(task)
        for p, g in zip(own, self._own_stash.pop(task)):
            p.grad = g

    def _add_row(self, task: str, shared: List[nn.Parameter], grads: List[Optional[Tensor]], factor: float) -> None:
        """Matrix path: the task's flat shared gradient (times ``factor``) as the next row."""
        slot, row = self._next_row(shared)
        if shared:
            torch.cat([g.reshape(-1).to(row.dtype) if g is not None else row.new_zeros(p.numel())
                       for p, g in zip(shared, grads)], out=row)
            if factor != 1.0:
                row.mul_(factor)
        self._rows.append(row)
        self._row_tasks.append(task)
        self._row_slots.append(slot)

    def _accumulate(self, grads: List[Optional[Tensor]], factor: float) -> None:
        """Streaming path: ``acc += factor * g_t`` into the one shared-sized buffer."""
        if self._acc is None:
            self._acc = [None] * len(grads)
        _add_scaled(self._acc, grads, factor)

    def _on_nonfinite(self, task: str) -> None:
        """Hook for the AMP variant (remembers the overflow)."""

    def _on_skipped_step(self) -> None:
        """Hook for the AMP variant (backs the loss scale off when no step is taken)."""

    # ---------------------------------------------------------------- combine and step
    def _loss_divisor(self) -> int:
        """The k of gradient accumulation for the current micro-step (mmengine's remainder rule)."""
        if self._accumulative_counts == 1:
            return 1
        if self._max_counts == -1 or self._inner_count < self._max_counts - self._remainder_counts:
            return self._accumulative_counts
        return self._remainder_counts

    def _combine(self, cos_due: bool = False) -> CombinedStep:
        """Aggregate this micro-step's task gradients."""
        tasks = list(self._stats)
        scale = self._grad_scale()
        stats = torch.tensor([self._task_stats(t) for t in tasks], dtype=torch.float64).reshape(-1, 4)
        losses, norms, own_norms = stats[:, 0], stats[:, 1], stats[:, 2]
        cos = None
        if self._rows:
            G, samples = self._gradient_matrix(tasks)
            if samples is None:
                result = self.aggregator.aggregate(G, losses.to(G.dtype), own_norms.to(G.dtype), tasks)
            else:  # k gradient samples per task: (k, T, n); the cosines of the parts' mean
                result = self.aggregator.aggregate_samples(samples, losses.to(G.dtype), own_norms.to(G.dtype), tasks)
                G = samples.mean(0) if cos_due else G
            flat = result.grad * scale
            combined, offset = [], 0
            for p in self._shared:
                combined.append(flat[offset:offset + p.numel()].view_as(p).to(p.dtype))
                offset += p.numel()
            weights, own_scales = result.weights, result.own_scales
            if len(tasks) > 1 and cos_due:  # from the Gram matrix: no normalised copy of G
                K = (G @ G.T).double()
                d = K.diagonal().clamp_min(0).sqrt().clamp_min(1e-12)
                cos = K / (d[:, None] * d[None, :])
        else:
            factors = stats[:, 3]
            weights, own_scales, common = self.aggregator.combine_factors(norms, own_norms, factors, losses, tasks)
            combined = self._acc or []
            if common != 1.0:
                torch._foreach_mul_([c for c in combined if c is not None], common)
        self._acc = None
        return CombinedStep(tasks, combined, weights, own_scales, norms, losses, cos)

    def _task_stats(self, task: str) -> tuple:
        """(loss, shared norm, own norm, factor) of a task: with several gradient samples the mean loss and
        norm of the parts, the own norm of their sum (what ``.grad`` holds), the first part's factor."""
        parts = self._stats[task]
        if len(parts) == 1:
            return parts[0]
        return (sum(p[0] for p in parts) / len(parts), sum(p[1] for p in parts) / len(parts), parts[-1][2],
                parts[0][3])

    def _gradient_matrix(self, tasks: List[str]):
        """``(G, None)``: the (T, n) rows in task order; or ``(G, samples)`` with the ``(k, T, n)`` samples
        when every task has k > 1 rows (the aggregator's gradient samples)."""
        rows, row_tasks, slots, matrix = self._rows, self._row_tasks, self._row_slots, self._matrix
        self._rows, self._row_tasks, self._row_slots, self._matrix = [], [], [], None
        counts = {t: row_tasks.count(t) for t in tasks}
        k = counts[tasks[0]]
        if any(c != k for c in counts.values()):
            raise RuntimeError(f'gradient samples per task differ in this step: {counts}')
        order = [i for t in tasks for i, rt in enumerate(row_tasks) if rt == t]
        if [slots[i] for i in order] == list(range(len(order))):
            G = matrix[:len(order)]      # the rows in task order, in place: a view, no copy
        else:
            G = torch.stack([rows[i] for i in order])
        if k == 1:
            return G, None
        return G, G.view(len(tasks), k, -1).transpose(0, 1)

    def update_tasks(self) -> None:
        """Combine the task gradients of this iteration into ``.grad`` and step when due."""
        if not self.is_bound:
            raise RuntimeError('update_tasks called before bind()')
        self._finish_pending()
        k = self._loss_divisor()  # before the count moves, as mmengine's scale_loss
        cos_due = self._stats_due()
        self._inner_count += 1
        shared_stash = self._shared_stash or [None] * len(self._shared)
        if self._stats:
            step = self._combine(cos_due)
            self._contributed = True
            for p, total, c in zip(self._shared, shared_stash, step.grads or [None] * len(self._shared)):
                if c is not None and k != 1:
                    c.div_(k)
                p.grad = c if total is None else (total if c is None else total.add_(c))
            for t, hs in zip(step.tasks, step.own_scales.tolist()):
                for p, total in zip(self._own[t], self._own_stash.pop(t)):
                    g = p.grad
                    if g is not None:
                        g.mul_(hs / k * self.grad_sync.local_weight(t))
                    p.grad = g if total is None else (total if g is None else total.add_(g))
            self._log(step, cos_iter=self._inner_count)
        else:
            for p, total in zip(self._shared, shared_stash):
                p.grad = total
        self._reset_pass()
        if self.should_update():
            if self._contributed:
                self.grad_sync.before_step(self._shared + [p for ps in self._own.values() for p in ps])
                self.step()
            else:
                print_log('every task gradient was non-finite since the last update: optimizer step '
                          'skipped', logger='current', level=logging.WARNING)
                self._on_skipped_step()
            self.zero_grad()
            self._contributed = False

    def _log(self, step: CombinedStep, cos_iter: int = 0) -> None:
        tasks, weights, norms, cos = step.tasks, step.weights, step.norms, step.cos
        stats = OrderedDict()
        for i, t in enumerate(tasks):
            w = float(weights[i])
            stats[f'{t}.grad_norm'] = float(norms[i])
            stats[f'{t}.grad_norm_agg'] = abs(w) * float(norms[i])
            stats[f'{t}.weight'] = w
        if cos is not None:
            for i in range(len(tasks)):
                for j in range(i + 1, len(tasks)):
                    stats[f'cos.{tasks[i]}-{tasks[j]}'] = float(cos[i, j])
            # the log shows the latest value of every scalar, so between two cosine updates it repeats
            # them: this says which iteration (1-based, as the log's) they describe
            stats['cos.iter'] = float(cos_iter)
        for t, n in self.skipped.items():
            stats[f'{t}.nonfinite_skips'] = float(n)
        fallbacks = self.aggregator.fallbacks  # solver failures (Nash-MTL, CAGrad, MaxGNR; summed in a chain)
        if fallbacks is not None:
            stats['aggregator.fallbacks'] = float(fallbacks)
        self.last_stats = stats
        for key, value in stats.items():
            self.message_hub.update_scalar(f'train/{key}', value)

    def state_dict(self) -> dict:
        state = super().state_dict()
        agg = self.aggregator.state_dict()
        if agg:
            state['aggregator'] = agg
        if self.skipped:
            state['nonfinite_skips'] = {t: int(n) for t, n in self.skipped.items()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        agg = state_dict.pop('aggregator', None)
        if agg is not None:
            self.aggregator.load_state_dict(agg)
        self.skipped = Counter({str(t): int(n) for t, n in state_dict.pop('nonfinite_skips', {}).items()})
        super().load_state_dict(state_dict)


@OPTIM_WRAPPERS.register_module()
class MultiTaskAmpOptimWrapper(MultiTaskOptimWrapper, AmpOptimWrapper):
    """Mixed-precision variant: per-task statistics and clipping act on *unscaled* gradients.

    Each task's loss is scaled by the loss scaler before its backward; its norms are divided by the
    scale before the aggregator sees them, the combined gradient stays in the scaled space and
    :meth:`AmpOptimWrapper.step` unscales it once (then the global clip, if any, and the step). A
    task whose scaled gradient overflows is skipped for that step (the other tasks still update),
    and the loss scale moves exactly as ``torch.amp.GradScaler``'s after an overflow: halved, its
    growth count restarted, no growth on that step. The skipped task's gradient never reaches the
    scaler, so its overflow is reported to it the way GradScaler learns of an overflow in one of
    several optimizers: ``unscale_`` of a one-element probe optimizer whose gradient is inf, before
    the step's ``update()``. Where mmengine's ``AmpOptimWrapper`` runs (an accelerator), mmengine
    initialises it; unlike mmengine's it also runs on CPU (``torch.amp.GradScaler('cpu')``, bf16
    autocast), which is how it is tested here.

    Args:
        loss_scale: ``'dynamic'``, a float (static scale) or GradScaler kwargs.
        dtype: autocast dtype (``'float16'``, ``'bfloat16'``; default: the device's).
        Others: as :class:`MultiTaskOptimWrapper`.
    """

    def __init__(self, optimizer, aggregator=dict(type='SumAggregator'), streaming=None, stats_interval=50,
                 loss_scale='dynamic', dtype=None, **kwargs):
        if mmengine_amp_available():
            # mmengine's own initialisation: its loss-scale and dtype parsing, its scaler (FSDP's with
            # ``use_fsdp=True``), so this wrapper follows mmengine wherever mmengine's wrapper runs
            AmpOptimWrapper.__init__(self, optimizer=optimizer, loss_scale=loss_scale, dtype=dtype, **kwargs)
        else:
            OptimWrapper.__init__(self, optimizer=optimizer, **kwargs)
            self._init_cpu_amp(loss_scale, dtype)
        self._init_multitask(aggregator, streaming, stats_interval)
        self._overflowed = False
        self._probe = None  # (parameter, optimizer) that reports a skipped task's overflow to the scaler

    def _init_cpu_amp(self, loss_scale, dtype):
        """What mmengine's ``AmpOptimWrapper.__init__`` sets, where mmengine refuses to (no accelerator):
        a CPU ``GradScaler`` from the same ``loss_scale`` forms, and the autocast dtype."""
        self._scale_update_param = None
        if loss_scale == 'dynamic':
            self.loss_scaler = torch.amp.GradScaler('cpu')
        elif isinstance(loss_scale, float):
            self._scale_update_param = loss_scale
            self.loss_scaler = torch.amp.GradScaler('cpu', init_scale=loss_scale)
        elif isinstance(loss_scale, dict):
            self.loss_scaler = torch.amp.GradScaler('cpu', **loss_scale)
        else:
            raise TypeError(f'loss_scale must be "dynamic", a float or a dict, got {loss_scale!r}')
        if isinstance(dtype, str):
            if dtype not in self.valid_dtypes:
                raise ValueError(f'dtype must be one of {self.valid_dtypes}, got {dtype!r}')
            dtype = getattr(torch, dtype)
        self.cast_dtype = dtype

    def _backward(self, loss: Tensor) -> None:
        self.loss_scaler.scale(loss).backward()

    def _grad_scale(self) -> float:
        return float(self.loss_scaler.get_scale()) if self.loss_scaler.is_enabled() else 1.0

    def _on_nonfinite(self, task: str) -> None:
        self._overflowed = True

    def _report_overflow(self) -> None:
        """Make the scaler's next ``update()`` see the inf of the task skipped since the last step."""
        if not (self._overflowed and self.loss_scaler.is_enabled()):
            return
        if self._probe is None:
            ref = next(p for g in self.optimizer.param_groups for p in g['params'])
            param = torch.zeros(1, device=ref.device, requires_grad=True)
            self._probe = (param, torch.optim.SGD([param], lr=0.0))
        param, probe = self._probe
        param.grad = torch.full_like(param, float('inf'))
        self.loss_scaler.unscale_(probe)   # records found_inf for this (never stepped) optimizer
        param.grad = None

    def _on_skipped_step(self) -> None:
        """No task contributed: no optimizer step, but the scale backs off as GradScaler's would."""
        if self._overflowed and self.loss_scaler.is_enabled():
            self._report_overflow()
            self.loss_scaler.update(self._scale_update_param)
        self._overflowed = False

    def step(self, **kwargs) -> None:
        self._report_overflow()
        AmpOptimWrapper.step(self, **kwargs)
        self._overflowed = False
