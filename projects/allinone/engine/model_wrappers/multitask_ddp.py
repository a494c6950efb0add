"""Data-parallel training that keeps the per-task gradient statistics exact across ranks.

Plain DDP all-reduces the gradient of the *summed* loss once per step, so a per-task method (TBGC,
later gradient-surgery methods) would only ever see rank-local task gradients and norms.
:class:`MultiTaskDistributedDataParallel` instead lets :class:`MultiTaskOptimWrapper` run each task
as in one process and hooks a :class:`TaskGradSync` into it:

``mode='exact'`` (default)
    right after task t's backward, its gradients (shared backbone *and* task t's own parameters,
    plus its loss value) are averaged over the ranks in flat buckets, *before* the optim wrapper
    measures norms and calls the aggregator. Every rank then holds ``g_t = mean_r g_t^r``, the
    gradient one process would compute on the global batch (per-sample mean losses, equal per-rank
    batches), and every rank aggregates identically. Cost per step: T all-reduces of the backbone
    plus each task's own parameters once.

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

A task absent from a rank's batch (or a parameter without a gradient) takes part in the
collectives with zeros, so the ranks never disagree on what they all-reduce: a step where rank 1
has no batch for task t averages t's gradient over the ranks that had one (what one process with
the union of the batches computes). Buffers (BatchNorm running statistics) are broadcast from
rank 0 at each step, as ``DistributedDataParallel(broadcast_buffers=True)``; batch statistics stay
per rank unless the model uses SyncBN (``norm_cfg=dict(type='SyncBN')`` or ``sync_bn='torch'`` in
the config), so BN models are not exactly the global-batch model.
"""
import logging
import math
from collections import OrderedDict, deque
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.distributed as dist
from mmengine.logging import print_log
from torch import Tensor, nn

from ...registry import MODEL_WRAPPERS

MODES = ('exact', 'approximate')


class TaskGradSync:
    """The collectives of one data-parallel multi-task step (called by ``MultiTaskOptimWrapper``).

    ``counters`` adds up what went over the wire: ``allreduce_bytes`` / ``allreduce_calls`` (task
    presence, gradients, statistics) and ``broadcast_bytes`` / ``broadcast_calls`` (parameters at
    the first step, buffers after).
    """

    def __init__(self, mode: str = 'exact', group=None, bucket_cap_mb: float = 25.0,
                 device: Optional[torch.device] = None):
        if mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
        if bucket_cap_mb <= 0:
            raise ValueError(f'bucket_cap_mb must be > 0, got {bucket_cap_mb}')
        self.mode = mode
        self.exact = mode == 'exact'
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.bucket_cap = int(bucket_cap_mb * 2**20)
        self.device = device or torch.device('cpu')
        self.present: Dict[str, int] = {}
        self.counters = dict(allreduce_bytes=0, allreduce_calls=0, broadcast_bytes=0, broadcast_calls=0)

    # ------------------------------------------------------------------ step bookkeeping
    def begin_step(self, data: Dict[str, dict], tasks: Sequence[str]) -> 'OrderedDict[str, Optional[dict]]':
        """Agree on the step's tasks: returns the batch in model task order, ``None`` where this rank
        has no batch for a task another rank has; tasks no rank has are left out."""
        unknown = [t for t in data if t not in tasks]
        if unknown:
            raise KeyError(f'batch for unknown task(s) {unknown}; the model has tasks {list(tasks)}')
        have = torch.tensor([0.0 if data.get(t) is None else 1.0 for t in tasks], device=self.device)
        self._all_reduce(have)
        self.present = {t: int(round(n)) for t, n in zip(tasks, have.tolist())}
        return OrderedDict((t, data.get(t)) for t in tasks if self.present[t] > 0)

    def ranks_with(self, task: str) -> int:
        """How many ranks had a batch of ``task`` this step (the divisor of its average)."""
        return max(self.present.get(task, self.world_size), 1)

    def local_weight(self, task: str) -> float:
        """Factor on this rank's *local* task gradient (approximate mode) so that averaging over all
        ranks averages over the ranks that had the task."""
        return 1.0 if self.exact else self.world_size / self.ranks_with(task)

    # ------------------------------------------------------------------ hooks of the optim wrapper
    def after_task_backward(self, task: str, shared: List[nn.Parameter], own: List[nn.Parameter],
                            loss_value: float) -> float:
        """Exact mode: average task's gradients (in place of ``.grad``) and loss over the ranks."""
        if not self.exact:
            return loss_value
        return self.average_grads(shared + own, self.ranks_with(task), extra=[loss_value])[0]

    def task_stats(self, task: str, norm: float, head_norm: float, loss_value: float):
        """Approximate mode: the ranks' mean squared norms (their square roots) and mean loss."""
        if self.exact:
            return norm, head_norm, loss_value
        stats = torch.tensor([norm * norm, head_norm * head_norm, loss_value], dtype=torch.float64,
                             device=self.device)
        self._all_reduce(stats)
        n2, h2, loss = (stats / self.ranks_with(task)).tolist()
        return math.sqrt(n2), math.sqrt(h2), loss

    def before_step(self, params: Iterable[nn.Parameter]) -> None:
        """Approximate mode: average the combined gradient of every parameter once per step."""
        if not self.exact:
            self.average_grads(list(params), self.world_size)

    # ------------------------------------------------------------------ collectives
    def _all_reduce(self, tensor: Tensor, async_op: bool = False):
        self.counters['allreduce_bytes'] += tensor.numel() * tensor.element_size()
        self.counters['allreduce_calls'] += 1
        return dist.all_reduce(tensor, group=self.group, async_op=async_op)

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
        """Sum ``.grad`` of ``params`` (zeros where missing) over the ranks and divide by ``divisor``.

        Each bucket also carries one presence flag per parameter: a parameter without a gradient on
        every rank keeps ``.grad = None`` (as in one process); otherwise the average is copied back
        into its ``.grad``. ``extra`` numbers ride in the first bucket and come back averaged. At
        most two buckets are alive at a time (one in flight while the next is packed), so the extra
        memory is two buckets, never a copy of all the gradients.
        """
        extra = list(extra)
        buckets = self._buckets(params)
        if not buckets and extra:
            t = torch.tensor(extra, dtype=torch.float64, device=self.device)
            self._all_reduce(t)
            return (t / divisor).tolist()
        pending = deque()

        def finish():
            nonlocal extra
            work, flat, bucket, numel, n_extra = pending.popleft()
            work.wait()
            flat.div_(divisor)
            flags = flat[numel:numel + len(bucket)].tolist()
            off = 0
            for p, flag in zip(bucket, flags):
                avg = flat[off:off + p.numel()].view_as(p)
                if flag <= 0:
                    p.grad = None
                elif p.grad is None:
                    p.grad = avg.clone()
                else:
                    p.grad.copy_(avg)
                off += p.numel()
            if n_extra:
                extra = flat[numel + len(bucket):].tolist()

        for i, bucket in enumerate(buckets):
            n_extra = len(extra) if i == 0 else 0
            numel = sum(p.numel() for p in bucket)
            flat = torch.empty(numel + len(bucket) + n_extra, dtype=bucket[0].dtype, device=bucket[0].device)
            off = 0
            for p in bucket:
                seg = flat[off:off + p.numel()]
                if p.grad is None:
                    seg.zero_()
                else:
                    seg.copy_(p.grad.reshape(-1))
                off += p.numel()
            flat[numel:numel + len(bucket)] = torch.tensor([p.grad is not None for p in bucket], dtype=flat.dtype)
            if n_extra:
                flat[numel + len(bucket):] = torch.tensor(extra, dtype=flat.dtype)
            pending.append((self._all_reduce(flat, async_op=True), flat, bucket, numel, n_extra))
            if len(pending) > 1:
                finish()
        while pending:
            finish()
        return extra

    def broadcast(self, tensors: List[Tensor]) -> None:
        """Copy rank 0's values of ``tensors`` (parameters, buffers) into every rank's, in buckets."""
        src = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        with torch.no_grad():
            for bucket in self._buckets(tensors):
                flat = torch.cat([t.detach().reshape(-1) for t in bucket])
                self.counters['broadcast_bytes'] += flat.numel() * flat.element_size()
                self.counters['broadcast_calls'] += 1
                dist.broadcast(flat, src=src, group=self.group)
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
        if not hasattr(optim_wrapper, 'backward_task'):
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
        optim_wrapper.grad_sync = sync
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
