"""Recon's search: per shared layer and task pair, the histogram of the task gradients' cosines.

During plain joint training each task has its own backward, and :class:`MultiTaskOptimWrapper`
isolates its shared gradient: right after task t's backward ``p.grad`` of every shared parameter
holds g_t alone. :class:`ReconSearchHook` reads it there (a per-task gradient hook of the wrapper,
``register_task_grad_hook``, for the run; under ``MultiTaskDistributedDataParallel`` exact mode this
is after the all-reduce, so every rank records the same cosines), and :class:`GradConflictRecorder`
reduces it.

A *layer* is a module owning shared parameters directly (``named_modules()`` with
``named_parameters(recurse=False)``, weight and bias joined into one vector), so every trainable
shared parameter belongs to exactly one layer. Per iteration the recorder holds one flat copy of
each task's shared gradient (T x the shared size; freed at the end of the iteration), reduces the
per-layer dot products and squared norms with ``index_add_`` (one reduction of the shared size per
task and per task pair), and adds each layer's cosine of each pair into a histogram with bins of
``bin_width`` over [-1, 1] (plus the sum of the cosines, for their mean), all on the gradients'
device: nothing is stored per step and nothing goes to the host until the report is written. A
pair where a task did not reach a layer (zero gradient) is not counted for that layer.
"""
import itertools
import logging
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from torch import Tensor, nn

from ...engine.model_wrappers.unwrap import unwrap_model
from ...registry import HOOKS
from .layers import is_convertible
from .report import SCORES, format_cosine_quantiles, format_ranking, rank_layers, write_report

REPORT_FORMAT = 'allinone-recon-search/1'


def shared_layers(model: nn.Module) -> List[Tuple[str, nn.Module, List[nn.Parameter]]]:
    """``[(name, module, [its shared parameters])]`` in module order; checks that every trainable
    shared parameter (``model.parameter_partition()['shared']``) is in exactly one layer."""
    shared = model.parameter_partition()['shared']
    ids = {id(p) for p in shared}
    layers, seen = [], set()
    for name, module in model.named_modules():
        params = [p for _, p in module.named_parameters(recurse=False) if id(p) in ids]
        params = [p for p in params if id(p) not in seen]  # a parameter tied into two modules: first one
        if params:
            seen.update(id(p) for p in params)
            layers.append((name, module, params))
    missing = len(ids - seen)
    if missing:
        raise RuntimeError(f'recon search: {missing} shared parameters belong to no module of the model')
    return layers


class GradConflictRecorder:
    """Accumulates, per layer and task pair, the histogram of the cosines of the task gradients.

    Call :meth:`record` right after each task's backward (``p.grad`` holding that task's gradient
    alone) and :meth:`end_iteration` after the last task of the iteration.
    """

    def __init__(self, layers: Sequence[Tuple[str, nn.Module, List[nn.Parameter]]], tasks: Sequence[str],
                 bin_width: float = 0.01):
        if not layers:
            raise ValueError('recon search: no shared layers to score')
        if len(tasks) < 2:
            raise ValueError(f'recon search: needs at least two tasks, got {list(tasks)}')
        nbins = int(round(2.0 / bin_width))
        if nbins < 1 or abs(nbins * bin_width - 2.0) > 1e-9:
            raise ValueError(f'bin_width must divide 2 (the range [-1, 1]), got {bin_width}')
        self.tasks = list(tasks)
        self.bin_width, self.nbins = float(bin_width), nbins
        self.names = [n for n, _, _ in layers]
        self.types = [type(m).__name__ for _, m, _ in layers]
        self.convertible = [is_convertible(m) for _, m, _ in layers]
        self.params = [p for _, _, ps in layers for p in ps]
        self.numel = [sum(p.numel() for p in ps) for _, _, ps in layers]
        self.pairs = list(itertools.combinations(range(len(self.tasks)), 2))
        device = self.params[0].device
        L, P = len(self.names), len(self.pairs)
        self.layer_index = torch.repeat_interleave(torch.arange(L, device=device),
                                                   torch.tensor(self.numel, device=device))
        self.hist = torch.zeros(L, P, nbins, dtype=torch.int64, device=device)
        self.sum_cos = torch.zeros(L, P, dtype=torch.float64, device=device)
        self.iterations = 0
        self._rows: Dict[str, Tensor] = {}

    @property
    def num_layers(self) -> int:
        return len(self.names)

    def record(self, task: str) -> None:
        """Copy ``task``'s shared gradient (``p.grad`` now) into one flat fp32 vector."""
        if task not in self.tasks:
            raise KeyError(f'recon search: unknown task {task!r}; recording {self.tasks}')
        self._rows[task] = torch.cat([
            p.grad.detach().reshape(-1).float() if p.grad is not None
            else torch.zeros(p.numel(), device=self.layer_index.device) for p in self.params])

    def _per_layer(self, x: Tensor) -> Tensor:
        return torch.zeros(self.num_layers, dtype=x.dtype, device=x.device).index_add_(0, self.layer_index, x)

    def end_iteration(self) -> None:
        """Add this iteration's cosines to the histograms and free the task gradients."""
        rows, self._rows = self._rows, {}
        self.iterations += 1
        sq = {t: self._per_layer(g * g) for t, g in rows.items()}
        for p, (i, j) in enumerate(self.pairs):
            ti, tj = self.tasks[i], self.tasks[j]
            if ti not in rows or tj not in rows:
                continue
            dot = self._per_layer(rows[ti] * rows[tj])
            denom = (sq[ti] * sq[tj]).sqrt()
            cos = (dot / denom).clamp(-1.0, 1.0)
            valid = (denom > 0) & torch.isfinite(cos)
            cos = torch.where(valid, cos, torch.zeros_like(cos))
            bins = ((cos + 1.0) / self.bin_width).floor().long().clamp(0, self.nbins - 1)
            flat = (torch.arange(self.num_layers, device=cos.device) * len(self.pairs) + p) * self.nbins + bins
            self.hist.view(-1).index_add_(0, flat, valid.long())
            self.sum_cos[:, p] += cos.double()

    def report(self, threshold: float = 0.0, score: str = 'raw', meta: Optional[dict] = None) -> dict:
        """The JSON-able report: every layer's histograms, ranked at ``threshold`` by ``score``."""
        hist = self.hist.cpu()
        sums = self.sum_cos.cpu()
        layers = []
        for k, name in enumerate(self.names):
            counts = hist[k].sum(-1)
            layers.append(dict(
                name=name, type=self.types[k], numel=int(self.numel[k]), convertible=bool(self.convertible[k]),
                mean_cos=[float(sums[k, p] / counts[p]) if counts[p] else None for p in range(len(self.pairs))],
                hist=hist[k].tolist()))
        report = dict(format=REPORT_FORMAT, tasks=self.tasks,
                      pairs=[[self.tasks[i], self.tasks[j]] for i, j in self.pairs],
                      iterations=self.iterations, bin_width=self.bin_width, bins=self.nbins,
                      threshold=float(threshold), score=score, shared_params=int(sum(self.numel)),
                      layers=layers, **(meta or {}))
        order = {r['name']: r for r in rank_layers(report, threshold, score)}
        for layer in layers:  # the stored order is the ranking at the given threshold
            r = order[layer['name']]
            layer.update({k: r[k] for k in ('rank', 'conflicts', 'observations', 'conflict_fraction',
                                             'chance', 'normalized')})
        layers.sort(key=lambda lay: lay['rank'])
        return report


@HOOKS.register_module()
class ReconSearchHook(Hook):
    """Records the per-layer task-gradient cosine histograms during training; writes the report.

    Train with ``SumAggregator`` (plain joint training: what Recon searches under; the recorded
    gradients are the tasks' own whatever the aggregator, but the trajectory is then that
    method's). ``tools/recon_search.py`` sets it up; it can also be added to any run as
    ``custom_hooks=[dict(type='ReconSearchHook')]``.

    Args:
        out_dir: where to write the report (default ``<work_dir>/recon_search``).
        bin_width: histogram bin width (default 0.01; S is read on this grid).
        threshold: S for the ranking stored in the report and printed (any S later, from the
            histograms: ``tools/recon_search.py --from-report``).
        score: ``'raw'`` or ``'normalized'`` (see :func:`~projects.allinone.routing.recon.report.rank_layers`).
        top: layers in the printed table and the bar plot.
    """

    priority = 'LOW'

    def __init__(self, out_dir: Optional[str] = None, bin_width: float = 0.01, threshold: float = 0.0,
                 score: str = 'raw', top: int = 20):
        if score not in SCORES:
            raise ValueError(f'score must be one of {SCORES}, got {score!r}')
        self.out_dir = out_dir
        self.bin_width = bin_width
        self.threshold = float(threshold)
        self.score = score
        self.top = int(top)
        self.recorder: Optional[GradConflictRecorder] = None
        self.report_path: Optional[str] = None
        self._handle = None  # of the wrapper's per-task gradient hook, while the run lasts

    def before_train(self, runner) -> None:
        model = unwrap_model(runner.model)
        wrapper = runner.optim_wrapper
        if not hasattr(wrapper, 'register_task_grad_hook'):
            raise TypeError('ReconSearchHook needs the per-task optim wrapper (MultiTaskOptimWrapper), got '
                            f'{type(wrapper).__name__}')
        agg = type(getattr(wrapper, 'aggregator', None)).__name__
        if agg != 'SumAggregator':
            print_log(f'ReconSearchHook: the run trains with {agg}; Recon searches under plain joint training '
                      '(SumAggregator)', logger='current', level=logging.WARNING)
        self.recorder = GradConflictRecorder(shared_layers(model), model.task_names, self.bin_width)
        recorder = self.recorder
        self._handle = wrapper.register_task_grad_hook(lambda task, shared, own: recorder.record(task))
        n = sum(recorder.numel)
        print_log(f'ReconSearchHook: recording {recorder.num_layers} shared layers ({n:,} parameters), '
                  f'{len(recorder.pairs)} task pairs, bins of {self.bin_width}', logger='current')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.recorder is not None:
            self.recorder.end_iteration()

    def after_train(self, runner) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.recorder is None or not is_main_process():
            return
        meta = dict(work_dir=runner.work_dir, iters=runner.iter)
        report = self.recorder.report(self.threshold, self.score, meta)
        out_dir = self.out_dir or osp.join(runner.work_dir, 'recon_search')
        self.report_path, png = write_report(report, out_dir, self.top, self.score)
        print_log(f'Recon search report: {self.report_path} (plot {png})\n' + format_ranking(report, self.top)
                  + '\n' + format_cosine_quantiles(report), logger='current')


