"""GradSplit's relation matrix from inter-task lookahead affinity (TAG, Fifty et al., NeurIPS 2021).

With ``model.grad_split=dict(relation='affinity', ...)`` and this hook in ``custom_hooks``, every
task trains every channel group during a warm-up (plain joint training), while the hook measures,
every ``interval`` iterations on that iteration's batches, how a step on task t's gradient changes
task u's loss::

    Z[t -> u] = 1 - L_u(theta_s - lr * g_t) / L_u(theta_s)       (shared parameters only)

(positive: t's step lowers u's loss). At the end of the warm-up the mean ``Z`` gives a score and
``R[t, u] = 1`` for ``t == u`` or ``score[t -> u] > threshold``; the hook writes it to a JSON file
(``{"tasks", "relation", "affinity", "score", ...}``, reusable as ``relation=FILE`` in later runs)
and turns the routing on.

How asymmetric is it? To first order in ``lr``, ``Z[t -> u] ~ lr * g_t . g_u / L_u``: the dot
product is symmetric, only the normalisation by ``L_u`` is not. So at ``threshold=0`` the sign of
``Z[t -> u]`` is the sign of ``Z[u -> t]`` (up to higher-order terms) and ``R`` comes out
symmetric; the asymmetry the paper describes needs a positive threshold:

* ``normalize='loss'`` (default, TAG's affinity): ``score = Z``; with ``threshold > 0`` task t may
  train u's group when its step lowers u's loss by more than that *fraction of L_u*: a task whose
  loss is large is helped less, relatively, than it helps.
* ``normalize='self'``: ``score[t -> u] = Z[t -> u] / Z[u -> u]`` (~ ``g_t . g_u / ||g_u||^2``):
  the share of the gain u's own step gives u that t's step gives it. With ``0 < threshold < 1``
  a task whose gradient is large along u's direction may train u's group while u, with a small
  gradient, may not train t's: the asymmetric relation of "t helps u" without "u helps t".
  Undefined (``R[t, u] = 0``) where u's own step does not lower its loss.

A measurement costs T extra backward passes and T + T^2 forward passes (losses only, no graph) on
the iteration's batches; the model's parameters, gradients, BatchNorm statistics and random states
are left as they were. Under data parallel each rank measures on its own batches and the means are
averaged over the ranks, so every rank sets the same R. On ``--resume`` past the warm-up the file
is read back; a resume inside the warm-up restarts the measurements.

Args:
    warmup_iters: length of the warm-up (iterations).
    interval: measure every this many iterations of the warm-up.
    lr: lookahead step size (SGD on the raw gradient); default: the optimizer's current learning
        rate of the shared parameters.
    threshold: score above which task t may train task u's group.
    normalize: ``'loss'`` (score = Z) or ``'self'`` (score = Z[t -> u] / Z[u -> u]).
    out: the JSON file (default ``<work_dir>/gradsplit_relation.json``).
"""
import copy
import json
import logging
import math
import os
import os.path as osp
from typing import Optional

import torch
from mmengine.dist import all_reduce, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log

from ...engine.hooks.random_state_hook import preserved_rng
from ...engine.model_wrappers.unwrap import unwrap_model
from ...registry import HOOKS


@HOOKS.register_module()
class GradSplitAffinityHook(Hook):

    priority = 'NORMAL'

    NORMALIZE = ('loss', 'self')

    def __init__(self, warmup_iters: int = 500, interval: int = 10, lr: Optional[float] = None,
                 threshold: float = 0.0, normalize: str = 'loss', out: Optional[str] = None):
        if warmup_iters < 1 or interval < 1:
            raise ValueError(f'warmup_iters and interval must be >= 1, got {warmup_iters}, {interval}')
        if normalize not in self.NORMALIZE:
            raise ValueError(f'GradSplitAffinityHook: normalize must be one of {self.NORMALIZE}, got {normalize!r}')
        self.normalize = normalize
        self.warmup_iters, self.interval = int(warmup_iters), int(interval)
        self.lr, self.threshold, self.out = lr, float(threshold), out
        self.split = None
        self.model = None
        self._sum = None
        self._count = None

    # ------------------------------------------------------------------ set-up
    def before_train(self, runner) -> None:
        model = unwrap_model(runner.model)
        split = model.routing.get('grad_split')
        if split is None:
            raise RuntimeError('GradSplitAffinityHook: the model has no grad_split; set '
                               "model.grad_split=dict(relation='affinity', ...)")
        if not split.awaiting_affinity:
            print_log('GradSplitAffinityHook: grad_split.relation is given; nothing to estimate',
                      logger='current', level=logging.WARNING)
            return
        self.model, self.split = model, split
        split.affinity_hook = self
        T = len(split.tasks)
        self._sum = torch.zeros(T, T, dtype=torch.float64)
        self._count = torch.zeros(T, T, dtype=torch.float64)
        path = self._path(runner)
        if runner.iter >= self.warmup_iters:
            if not osp.isfile(path):
                raise FileNotFoundError(f'GradSplitAffinityHook: resuming after the warm-up, but {path} (the '
                                        'relation it wrote) is missing')
            split.set_relation(path)
            print_log(f'GradSplit relation read back from {path}: {split.relation.int().tolist()}',
                      logger='current')

    def _path(self, runner) -> str:
        return self.out or osp.join(runner.work_dir, 'gradsplit_relation.json')

    def _lookahead_lr(self, runner, shared) -> float:
        if self.lr is not None:
            return float(self.lr)
        first = id(shared[0])
        for group in runner.optim_wrapper.optimizer.param_groups:
            if any(id(p) == first for p in group['params']):
                return float(group['lr'])
        return float(runner.optim_wrapper.optimizer.param_groups[0]['lr'])

    # ------------------------------------------------------------------ measurement
    def _losses(self, batches, seeds):
        out = {}
        for u, batch in batches.items():
            torch.manual_seed(seeds[u])  # the same dropout / sampling draws before and after the step
            loss, _ = self.model.task_loss(u, copy.deepcopy(batch))
            out[u] = float(loss)
        return out

    def measure(self, batches: dict, lr: float) -> torch.Tensor:
        """``Z`` (T x T, NaN where undefined) on ``batches`` ``{task: batch}``; leaves the model as it was."""
        model, tasks = self.model, self.split.tasks
        shared = [p for _, p in model.shared_parameters()]
        present = [t for t in tasks if batches.get(t) is not None]
        seeds = {u: 1000 + i for i, u in enumerate(tasks)}
        Z = torch.full((len(tasks), len(tasks)), float('nan'), dtype=torch.float64)
        buffers = [b.detach().clone() for b in model.buffers()]
        originals = [p.detach().clone() for p in shared]
        try:
            with preserved_rng():
                with torch.no_grad():
                    before = self._losses({u: batches[u] for u in present}, seeds)
                for t in present:
                    torch.manual_seed(seeds[t])
                    loss, _ = model.task_loss(t, copy.deepcopy(batches[t]))
                    grads = torch.autograd.grad(loss, shared, allow_unused=True)
                    with torch.no_grad():
                        for p, g in zip(shared, grads):
                            if g is not None:
                                p.sub_(g, alpha=lr)
                        after = self._losses({u: batches[u] for u in present}, seeds)
                        for p, o in zip(shared, originals):
                            p.copy_(o)
                    for u in present:
                        if before[u] > 0 and math.isfinite(before[u]) and math.isfinite(after[u]):
                            Z[tasks.index(t), tasks.index(u)] = 1.0 - after[u] / before[u]
        finally:
            with torch.no_grad():
                for p, o in zip(shared, originals):
                    p.copy_(o)
                for b, saved in zip(model.buffers(), buffers):
                    b.copy_(saved)
        return Z

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self.split is None or not self.split.awaiting_affinity or runner.iter >= self.warmup_iters:
            return
        if runner.iter % self.interval or not isinstance(data_batch, dict):
            return
        shared = [p for _, p in self.model.shared_parameters()]
        Z = self.measure(data_batch, self._lookahead_lr(runner, shared))
        ok = torch.isfinite(Z)
        self._sum += torch.where(ok, Z, torch.zeros_like(Z))
        self._count += ok.double()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.split is not None and self.split.awaiting_affinity and runner.iter + 1 >= self.warmup_iters:
            self.set_relation_from_affinity(runner)

    def score(self, Z: torch.Tensor) -> torch.Tensor:
        """The score compared with the threshold: ``Z`` or ``Z[t, u] / Z[u, u]`` (NaN where u's own step
        does not lower its loss)."""
        if self.normalize == 'loss':
            return Z.clone()
        own = Z.diagonal().clone()
        own[~(own > 0)] = float('nan')
        return Z / own[None, :]

    def set_relation_from_affinity(self, runner) -> None:
        """Mean affinity -> R; written to the file and set on the model."""
        stats = torch.stack([self._sum, self._count])
        all_reduce(stats)  # data parallel: the sums and counts of every rank (no-op in one process)
        mean = stats[0] / stats[1].clamp_min(1)
        mean[stats[1] == 0] = float('nan')
        tasks = self.split.tasks
        score = self.score(mean)
        R = (score > self.threshold) | torch.eye(len(tasks), dtype=torch.bool)  # NaN > x is False
        path = self._path(runner)
        if is_main_process():
            os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
            with open(path, 'w') as f:
                json.dump(dict(tasks=tasks, relation=R.int().tolist(),
                               affinity=[[None if math.isnan(v) else v for v in row] for row in mean.tolist()],
                               score=[[None if math.isnan(v) else v for v in row] for row in score.tolist()],
                               normalize=self.normalize, measurements=stats[1].tolist(),
                               threshold=self.threshold, warmup_iters=self.warmup_iters, interval=self.interval,
                               note='affinity[t][u] = 1 - L_u(after a step on g_t) / L_u(before); score = '
                                    'affinity (normalize "loss") or affinity[t][u] / affinity[u][u] ("self"); '
                                    'relation[t][u] = 1 (t == u or score > threshold): task t may train task '
                                    'u\'s channel group'), f, indent=1)
        self.split.set_relation(R.int().tolist())
        print_log(f'GradSplit relation from lookahead affinity ({int(stats[1].max())} measurements): '
                  f'{R.int().tolist()} written to {path}', logger='current')
