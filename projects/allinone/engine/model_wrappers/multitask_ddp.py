"""Data-parallel training that keeps the per-task gradient statistics exact across ranks.

Plain DDP all-reduces the gradient of the *summed* loss once per step, so a per-task method (TBGC,
later gradient-surgery methods) would only ever see rank-local task gradients and norms.
:class:`MultiTaskDistributedDataParallel` instead lets :class:`MultiTaskOptimWrapper` run each task
as in one process and hooks a :class:`TaskGradSync` into it:

``mode='exact'`` (default)
    task t's gradients (shared backbone *and* task t's own parameters, plus its loss value) are
    averaged over the ranks in flat buckets, *before* the optim wrapper measures norms and calls the
    aggregator. Every rank then holds ``g_t = mean_r g_t^r``, the gradient one process would compute
    on the global batch (per-sample mean losses, equal per-rank batches), and every rank aggregates
    identically. Cost per step: T all-reduces of the backbone plus each task's own parameters once.
    The transfer overlaps computation as in torch DDP's reducer: a post-accumulate-grad hook on
    every parameter marks its gradient final during the task's backward; a bucket whose gradients
    are all final is all-reduced asynchronously at once (buckets in a fixed order, the same on
    every rank; the ones a backward never completes, e.g. holding unused parameters, at its end),
    and the optim wrapper waits for them only when it needs the task's gradients: at the next
    task's ``backward_task`` or at ``update_tasks``. So the all-reduces run during the rest of the
    task's backward and the next task's forward. As with DDP, a parameter that only some ranks reach
    in a backward (a data-dependent graph) moves its bucket's launch to the end of the backward on
    those ranks; should that backward also run collectives of its own (SyncBN), the ranks could pair
    different collectives.

``mode='approximate'``
    each task's backward stays local; only ``(||g_t^r||^2, ||h_t^r||^2, loss_t^r)`` is averaged
    (3 numbers per task), so every rank computes the same factor ``f~_t`` from
    ``n~_t = sqrt(mean_r ||g_t^r||^2)``; each rank accumulates ``sum_t f~_t g_t^r`` locally and the
    combined gradient of all parameters is averaged once before the optimizer step (one backbone
    all-reduce instead of T). For a linear aggregator the update is ``sum_t f~_t g_t``: the exact
    update with ``n~_t`` in place of ``n_t``, where ``n~_t^2 = n_t^2 + mean_r ||g_t^r - g_t||^2``
    (the spread of the ranks' local gradients), so ``n~_t >= n_t``. It equals exact mode whenever
    ``f~_t == f_t`` for every task: always for ``SumAggregator`` (factor 1); for TBGC
    (``min(1, max_norm / (n + 1e-6))``) when the clip does not bind (``n~_t + 1e-6 <= max_norm``)
    or the ranks' local gradients coincide. When the clip binds (the paper's regime) task t reaches
    the backbone with norm ``max_norm * n_t / n~_t`` instead of ``max_norm``: noisier tasks (small
    per-rank batches) are damped more. Non-linear aggregators (matrix path) aggregate each rank's
    local gradients and the results are averaged; streaming aggregators never take the matrix path
    here (no cosine logs).

Every rank must draw the same tasks in a step: a task's forward may run collectives of its own
(SyncBN, mmdet's ``reduce_mean`` in RTMDet / DINO losses) that a rank without the task would never
join, so a step where some rank has no batch of a task another rank has fails at once, on every
rank, with an error naming the task and the ranks (tasks no rank has are left out). A parameter
without a gradient takes part in the collectives with zeros and a presence flag, so the ranks never
disagree on what they all-reduce. Buffers (BatchNorm running statistics) are broadcast from
rank 0 at each step, as ``DistributedDataParallel(broadcast_buffers=True)``; batch statistics stay
per rank unless the model uses SyncBN (``norm_cfg=dict(type='SyncBN')`` or ``sync_bn='torch'`` in
the config), so BN models are not exactly the global-batch model.
"""
import logging
import math
import time
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.distributed as dist
from mmengine.logging import print_log
from torch import Tensor, nn

from ...registry import MODEL_WRAPPERS
from ..optim_wrappers.grad_sync import GradSync
from ..optim_wrappers.multitask_optim_wrapper import MultiTaskOptimWrapper

MODES = ('exact', 'approximate')


class _TaskReduction:
    """One task's gradients on their way through the all-reduce (exact mode).

    ``buckets`` is the task's fixed bucket plan (the same on every rank); bucket ``k`` is launched
    (packed into a flat buffer, all-reduced asynchronously) once its gradients are all final and
    buckets ``0 .. k-1`` have been launched, so every rank issues the same collectives in the same
    order. Packing moves each gradient into the flat buffer and points ``.grad`` at its slice there,
    so a gradient is never held twice; when the reduction is waited for, the slices hold the average.
    """

    def __init__(self, sync: 'TaskGradSync', buckets: List[List[nn.Parameter]], divisor: int, extra: List[float]):
        self.sync, self.buckets, self.divisor, self.extra = sync, buckets, divisor, list(extra)
        self.slot = {id(p): k for k, b in enumerate(buckets) for p in b}
        self.waiting = [{id(p) for p in b} for b in buckets]
        self.launched = 0
        self.works = []

    def ready(self, param: nn.Parameter) -> None:
        """``param``'s gradient is final (its post-accumulate-grad hook fired)."""
        k = self.slot.get(id(param))
        if k is None:
            return
        self.waiting[k].discard(id(param))
        while self.launched < len(self.buckets) and not self.waiting[self.launched]:
            self._launch()
            self.sync.counters['allreduce_launched_in_backward'] += 1

    def flush(self) -> None:
        """After the backward: launch what is left (buckets with parameters it did not reach)."""
        while self.launched < len(self.buckets):
            self._launch()

    def _launch(self) -> None:
        k = self.launched
        self.launched += 1
        bucket = self.buckets[k]
        n_extra = len(self.extra) if k == 0 else 0
        numel = sum(p.numel() for p in bucket)
        flat = torch.empty(numel + len(bucket) + n_extra, dtype=bucket[0].dtype, device=bucket[0].device)
        off = 0
        with torch.no_grad():
            for p in bucket:
                seg = flat[off:off + p.numel()]
                if p.grad is None:
                    seg.zero_()
                else:
                    seg.copy_(p.grad.reshape(-1))
                    p.grad = seg.view_as(p)
                off += p.numel()
            flat[numel:numel + len(bucket)] = torch.tensor([p.grad is not None for p in bucket], dtype=flat.dtype)
            if n_extra:
                flat[numel + len(bucket):] = torch.tensor(self.extra, dtype=flat.dtype)
        self.works.append((self.sync._all_reduce(flat, async_op=True, kind='bucket'), flat, bucket, numel, n_extra))

    def wait(self) -> List[float]:
        """Wait for every bucket; the averages are then in ``.grad``. Returns the averaged extras."""
        self.flush()
        extra = self.extra
        with torch.no_grad():
            for work, flat, bucket, numel, n_extra in self.works:
                self.sync._wait(work)
                flat.div_(self.divisor)
                flags = flat[numel:numel + len(bucket)].tolist()
                off = 0
                for p, flag in zip(bucket, flags):
                    p.grad = flat[off:off + p.numel()].view_as(p) if flag > 0 else None
                    off += p.numel()
                if n_extra:
                    extra = flat[numel + len(bucket):].tolist()
        self.works = []
        return extra


class TaskGradSync(GradSync):
    """The collectives of one data-parallel multi-task step (called by ``MultiTaskOptimWrapper``).

    ``counters`` adds up what went over the wire: ``allreduce_bytes`` / ``allreduce_calls`` (task
    presence, gradients, statistics; ``allreduce_launched_in_backward``: gradient buckets started by
    the hooks while the backward still ran) and ``broadcast_bytes`` / ``broadcast_calls``
    (parameters at the first step, buffers after); and the wall time the training thread spent
    blocked: ``blocked_s`` in any collective, ``bucket_wait_s`` waiting for gradient buckets (the
    communication that computation did not hide, including waiting for a slower rank).
    ``step_allreduces`` lists ``(numel, dtype, kind)`` of the all-reduces since the last step began
    (kind ``'bucket'``: gradients; ``'other'``: task presence and statistics).
    """

    def __init__(self, mode: str = 'exact', group=None, bucket_cap_mb: float = 25.0,
                 device: Optional[torch.device] = None):
        if mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
        if isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float)) or not bucket_cap_mb > 0:
            raise ValueError(f'bucket_cap_mb must be a number > 0, got {bucket_cap_mb!r}')
        self.mode = mode
        self.exact = mode == 'exact'
        self.overlaps = self.exact  # the optim wrapper reads a task's gradients only when it needs them
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.bucket_cap = int(bucket_cap_mb * 2**20)
        self.device = device or torch.device('cpu')
        self.present: Dict[str, int] = {}
        self.counters = dict(allreduce_bytes=0, allreduce_calls=0, allreduce_launched_in_backward=0,
                             broadcast_bytes=0, broadcast_calls=0, blocked_s=0.0, bucket_wait_s=0.0)
        self.step_allreduces: List[tuple] = []
        self._plans: Dict[str, List[List[nn.Parameter]]] = {}   # task -> its bucket plan
        self._hooks: Dict[int, object] = {}                     # id(param) -> hook handle
        self._open: Optional[_TaskReduction] = None             # the task whose backward is running
        self._inflight: Dict[str, _TaskReduction] = {}          # task -> its reduction, until waited for

    # ------------------------------------------------------------------ step bookkeeping
    def begin_step(self, data: Dict[str, dict], tasks: Sequence[str]) -> 'OrderedDict[str, dict]':
        """Agree on the step's tasks: returns the batch in model task order, tasks no rank has left out.

        A task that some ranks have and others have not is an error on every rank (no rank would
        hang in a collective inside the task's forward that the others never join).
        """
        unknown = [t for t in data if t not in tasks]
        if unknown:
            raise KeyError(f'batch for unknown task(s) {unknown}; the model has tasks {list(tasks)}')
        self.step_allreduces = []
        have = torch.zeros(self.world_size, len(tasks), device=self.device)
        have[self.rank] = torch.tensor([0.0 if data.get(t) is None else 1.0 for t in tasks])
        self._all_reduce(have)
        have = have.cpu()
        self.present = {t: int(have[:, i].sum()) for i, t in enumerate(tasks)}
        for i, t in enumerate(tasks):
            if 0 < self.present[t] < self.world_size:
                without = [r for r in range(self.world_size) if have[r, i] == 0]
                raise RuntimeError(
                    f'task {t!r} has no batch on rank(s) {without} in this step while rank(s) '
                    f'{[r for r in range(self.world_size) if have[r, i] > 0]} have one (this is rank {self.rank}): '
                    'under MultiTaskDistributedDataParallel every rank draws the same tasks in a step (a '
                    "task's forward may run collectives of its own, e.g. SyncBN or mmdet's reduce_mean, "
                    'that a rank without the task would never join)')
        return OrderedDict((t, data.get(t)) for t in tasks if self.present[t] > 0)

    def ranks_with(self, task: str) -> int:
        """How many ranks had a batch of ``task`` this step (the divisor of its average)."""
        return max(self.present.get(task, self.world_size), 1)

    def local_weight(self, task: str) -> float:
        """Factor on this rank's *local* task gradient (approximate mode) so that averaging over all
        ranks averages over the ranks that had the task."""
        return 1.0 if self.exact else self.world_size / self.ranks_with(task)

    # ------------------------------------------------------------------ hooks of the optim wrapper
    def _plan(self, task: str, shared: List[nn.Parameter], own: List[nn.Parameter]) -> List[List[nn.Parameter]]:
        """Task's buckets: its own parameters, then the shared ones, each in reverse order (roughly
        the order the backward produces them), the two never in one bucket (the heads' gradients
        outlive the shared ones until the step)."""
        if task not in self._plans:
            self._plans[task] = self._buckets(list(reversed(own))) + self._buckets(list(reversed(shared)))
        return self._plans[task]

    def _grad_ready(self, param: nn.Parameter) -> None:
        if self._open is not None:
            self._open.ready(param)

    def before_task_backward(self, task: str, shared: List[nn.Parameter], own: List[nn.Parameter],
                             loss_value: float) -> None:
        """Exact mode: arm the task's buckets; each starts its all-reduce once its gradients are final."""
        if not self.exact:
            return
        if self._inflight:
            raise RuntimeError(f'task {task!r}: the gradients of {list(self._inflight)} were never waited for')
        for p in shared + own:
            if id(p) not in self._hooks and p.requires_grad:
                self._hooks[id(p)] = p.register_post_accumulate_grad_hook(self._grad_ready)
        self._open = _TaskReduction(self, self._plan(task, shared, own), self.ranks_with(task), [loss_value])
        self._inflight[task] = self._open

    def after_task_backward(self, task: str, shared: List[nn.Parameter], own: List[nn.Parameter],
                            loss_value: float) -> float:
        """Exact mode: wait for task's all-reduces; ``.grad`` then holds the averages. Returns the
        mean loss over the ranks."""
        if not self.exact:
            return loss_value
        self.end_task_backward()
        reduction = self._inflight.pop(task, None)
        if reduction is None:
            raise RuntimeError(f'task {task!r}: no all-reduce in flight (before_task_backward was not called)')
        return reduction.wait()[0]

    def end_task_backward(self) -> None:
        """Right after a task's backward (before anything else can issue a collective, such as the
        next task's forward): launch the buckets it did not complete, stop listening to the hooks."""
        if self._open is not None:
            self._open.flush()
            self._open = None

    def task_stats(self, task: str, norm: float, own_norm: float, loss_value: float):
        """Approximate mode: the ranks' mean squared norms (their square roots) and mean loss."""
        if self.exact:
            return norm, own_norm, loss_value
        stats = torch.tensor([norm * norm, own_norm * own_norm, loss_value], dtype=torch.float64,
                             device=self.device)
        self._all_reduce(stats)
        n2, h2, loss = (stats / self.ranks_with(task)).tolist()
        return math.sqrt(n2), math.sqrt(h2), loss

    def before_step(self, params: Iterable[nn.Parameter]) -> None:
        """Approximate mode: average the combined gradient of every parameter once per step."""
        if not self.exact:
            self.average_grads(list(params), self.world_size)

    def average(self, params: Iterable[nn.Parameter]) -> None:
        self.average_grads(list(params), self.world_size)

    def remove_hooks(self) -> None:
        """Detach the gradient hooks from the parameters (the wrapper is no longer used)."""
        for handle in self._hooks.values():
            handle.remove()
        self._hooks = {}

    # ------------------------------------------------------------------ collectives
    def _all_reduce(self, tensor: Tensor, async_op: bool = False, kind: str = 'other'):
        self.counters['allreduce_bytes'] += tensor.numel() * tensor.element_size()
        self.counters['allreduce_calls'] += 1
        self.step_allreduces.append((tensor.numel(), tensor.dtype, kind))
        if async_op:
            return dist.all_reduce(tensor, group=self.group, async_op=True)
        t0 = time.perf_counter()
        dist.all_reduce(tensor, group=self.group)
        self.counters['blocked_s'] += time.perf_counter() - t0
        return None

    def _wait(self, work) -> None:
        t0 = time.perf_counter()
        work.wait()
        dt = time.perf_counter() - t0
        self.counters['blocked_s'] += dt
        self.counters['bucket_wait_s'] += dt

    def _buckets(self, params: List[Tensor]) -> List[List[Tensor]]:
        """Consecutive runs of same device and dtype, each at most ``bucket_cap`` bytes (a larger
        tensor gets a bucket of its own). Depends on the parameters only: the same on every rank."""
        out, cur, size, key = [], [], 0, None
        for p in params:
            nbytes = p.numel() * p.element_size()
            k = (p.device, p.dtype)
            if cur and (k != key or size + nbytes > self.bucket_cap):
                out.append(cur)
                cur, size = [], 0
            cur.append(p)
            size += nbytes
            key = k
        if cur:
            out.append(cur)
        return out

    def average_grads(self, params: List[nn.Parameter], divisor: int, extra: Sequence[float] = ()) -> List[float]:
        """Sum ``.grad`` of ``params`` (zeros where missing) over the ranks and divide by ``divisor``
        (approximate mode's combined gradient, once per step).

        Each bucket also carries one presence flag per parameter: a parameter without a gradient on
        every rank keeps ``.grad = None`` (as in one process); otherwise ``.grad`` becomes its slice of
        the averaged bucket (the gradient moves into the bucket, it is never held twice). ``extra``
        numbers ride in the first bucket and come back averaged.
        """
        extra = list(extra)
        buckets = self._buckets(params)
        if not buckets and extra:
            t = torch.tensor(extra, dtype=torch.float64, device=self.device)
            self._all_reduce(t)
            return (t / divisor).tolist()
        reduction = _TaskReduction(self, buckets, divisor, extra)
        reduction.flush()
        return reduction.wait()

    def broadcast(self, tensors: List[Tensor]) -> None:
        """Copy rank 0's values of ``tensors`` (parameters, buffers) into every rank's, in buckets."""
        src = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        with torch.no_grad():
            for bucket in self._buckets(tensors):
                flat = torch.cat([t.detach().reshape(-1) for t in bucket])
                self.counters['broadcast_bytes'] += flat.numel() * flat.element_size()
                self.counters['broadcast_calls'] += 1
                t0 = time.perf_counter()
                dist.broadcast(flat, src=src, group=self.group)
                self.counters['blocked_s'] += time.perf_counter() - t0
                off = 0
                for t in bucket:
                    t.copy_(flat[off:off + t.numel()].view_as(t))
                    off += t.numel()


@MODEL_WRAPPERS.register_module()
class MultiTaskDistributedDataParallel(nn.Module):
    """Model wrapper for ``--launcher pytorch`` that runs ``AllInOneModel.train_step`` task by task.

    Set in the config (``configs/_base_/default_runtime.py`` does; ``tools/train.py`` also
    defaults to it under a launcher)::

        model_wrapper_cfg = dict(type='MultiTaskDistributedDataParallel', mode='exact')

    mmengine's ``MMDistributedDataParallel.train_step`` sums the task losses through DDP's forward
    and never calls the model's ``train_step``; this wrapper does call it, with the per-task optim
    wrapper synchronised by a :class:`TaskGradSync` (module docstring: what ``exact`` and
    ``approximate`` all-reduce and when they agree). It is not a ``DistributedDataParallel``
    subclass: DDP's reducer would all-reduce the sum of all tasks' gradients behind the optim
    wrapper's back, and error on parameters a step does not reach.

    Args:
        module: the :class:`AllInOneModel`.
        mode: ``'exact'`` or ``'approximate'``.
        bucket_cap_mb: size of the flat all-reduce buckets.
        broadcast_buffers: broadcast rank 0's buffers (BN running statistics) before every step.
        process_group: the group to reduce over (default: the world).
    """

    def __init__(self, module: nn.Module, mode: str = 'exact', bucket_cap_mb: float = 25.0,
                 broadcast_buffers: bool = True, process_group=None):
        super().__init__()
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(f'{type(self).__name__} needs an initialised process group (launch with '
                               'tools/dist_train.sh or torchrun ... tools/train.py --launcher pytorch)')
        if not hasattr(module, 'parameter_partition') or not hasattr(module, 'task_names'):
            raise TypeError(f'{type(self).__name__} wraps a multi-task model with parameter_partition() and '
                            f'task_names (AllInOneModel), got {type(module).__name__}')
        param = next(iter(module.parameters()), None)
        if param is None or param.device.type == 'cpu':
            module = self._cpu_batchnorm(module)
        self.module = module
        self.mode = mode
        self.broadcast_buffers = bool(broadcast_buffers)
        self.grad_sync = TaskGradSync(mode, process_group, bucket_cap_mb,
                                      param.device if param is not None else None)
        self._synced = False
        self._warned = False
        self._buffers_stale = False  # a train step ran since the buffers were last broadcast
        print_log(f'{type(self).__name__}: {self.grad_sync.world_size} ranks, mode={mode}, '
                  f'bucket {bucket_cap_mb} MB, broadcast_buffers={self.broadcast_buffers}', logger='current')

    @staticmethod
    def _cpu_batchnorm(module: nn.Module) -> nn.Module:
        """torch's SyncBatchNorm runs on GPUs only; on CPU (gloo) it becomes BatchNorm again (batch
        statistics per rank). mmdet's RTMDet converts its BN to SyncBN by itself under DDP."""
        n = sum(isinstance(m, nn.SyncBatchNorm) for m in module.modules())
        if not n:
            return module
        from mmengine.model import revert_sync_batchnorm
        print_log(f'{n} SyncBatchNorm layers reverted to BatchNorm: SyncBN needs GPUs, this run is on CPU '
                  '(batch statistics are per rank)', logger='current', level=logging.WARNING)
        return revert_sync_batchnorm(module)

    @property
    def data_preprocessor(self):
        return self.module.data_preprocessor

    def train_step(self, data: Dict[str, dict], optim_wrapper) -> Dict[str, Tensor]:
        if not isinstance(optim_wrapper, MultiTaskOptimWrapper):
            raise TypeError(f'{type(self).__name__} needs the per-task optim wrapper '
                            f'(MultiTaskOptimWrapper / MultiTaskAmpOptimWrapper), got {type(optim_wrapper).__name__}')
        if not isinstance(data, dict) or not data:
            raise TypeError(f'{type(self).__name__}.train_step expects {{task_name: batch}}; build the run '
                            'with MultiTaskTrainLoop (train_cfg.type)')
        sync = self.grad_sync
        if not self._synced:  # after weight init and checkpoint loading: every rank starts from rank 0's
            sync.broadcast(list(self.module.parameters()) + list(self.module.buffers()))
            self._synced = True
        elif self.broadcast_buffers:
            sync.broadcast(list(self.module.buffers()))
        optim_wrapper.use_grad_sync(sync)
        if not sync.exact and not self._warned and not getattr(optim_wrapper, 'streaming', True):
            print_log(f'approximate mode with {type(optim_wrapper.aggregator).__name__} (matrix path): each rank '
                      'aggregates its local task gradients and the results are averaged; use mode="exact" '
                      'for the aggregation of the global gradients', logger='current', level=logging.WARNING)
        self._warned = True
        self._buffers_stale = True
        return self.module.train_step(sync.begin_step(data, self.module.task_names), optim_wrapper)

    def _sync_buffers_for_eval(self) -> None:
        """Before the first evaluation step after training: each rank's last train step moved its own
        BN running statistics, so every rank takes rank 0's (those its checkpoints hold)."""
        if self._buffers_stale and self.broadcast_buffers:
            self.grad_sync.broadcast(list(self.module.buffers()))
        self._buffers_stale = False

    def val_step(self, data):
        self._sync_buffers_for_eval()
        return self.module.val_step(data)

    def test_step(self, data):
        self._sync_buffers_for_eval()
        return self.module.test_step(data)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
