"""One shared backbone, one complete OpenMMLab model per task."""
import copy
import logging
from collections import OrderedDict
from typing import Dict, Iterator, List, Optional, Tuple, Union

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModel, ModuleDict
from mmengine.optim import OptimWrapper
from mmengine.registry import MODELS as ROOT_MODELS
from torch import nn

from ..engine.optim_wrappers import MultiTaskOptimWrapper
from ..registry import MODELS
from ..routing.base import RoutingMethod, build_routing, routing_order
from ..routing.context import TaskContext
from .pretrained import (
    check_load_report,
    describe_source,
    format_load_report,
    load_report,
    pretrained_checkpoint,
    recording_loads,
)

PASS_THROUGH = 'SharedFeatures'


def split_batch(batch: dict, parts: int, task: str) -> List[dict]:
    """``batch`` (``inputs`` and ``data_samples`` lists, as the loaders collate them) in ``parts``
    contiguous parts of near-equal size: the independent gradient samples of one task."""
    n = len(batch['data_samples'])
    if n < parts:
        raise ValueError(f'task {task!r}: a batch of {n} sample(s) cannot give the {parts} independent gradient '
                         f'samples the aggregator takes (optim_wrapper.aggregator.samples); use a batch size of '
                         f'at least {parts} per rank for this task, or fewer samples')
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [{k: v[a:b] for k, v in batch.items()} for a, b in zip(bounds, bounds[1:])]


@MODELS.register_module()
class AllInOneModel(BaseModel):
    """Multi-task model: ``backbone`` is shared; ``tasks`` maps a task name to a full model config.

    A task entry is the config of a real OpenMMLab model (an mmdet detector such as RTMDet or DINO,
    an mmseg ``EncoderDecoder``, an mmpretrain ``ImageClassifier``), written without a backbone; the
    task keeps its own neck(s), head(s), train/test settings, data sample type and data
    preprocessor, and its backbone becomes :class:`SharedFeatures`. So the task set (names, count,
    heads) is config only: drop an entry, or add a second detector under another name.

    Data flow: each batch is ``{task_name: batch_of_that_task}``. ``train_step`` runs task by task
    (preprocess -> shared backbone -> task loss) and hands each task's loss to the optim wrapper
    separately, so a per-task gradient wrapper (``MultiTaskOptimWrapper``) can keep the tasks'
    backbone gradients apart; each task's graph is freed after its backward.

    Args:
        backbone: config of the shared backbone (any registered backbone, e.g. mmdet ``ResNet`` or
            ``dict(_scope_='mmpretrain', type='VisionTransformer', ...)``).
        tasks: ordered ``{name: model config}``; the order is the order of the per-task passes. A
            task set to ``None`` (a child config finetuning one task of its base) is left out.
        task_loss_weights: optional ``{name: float}`` static loss weights (default 1).
        neck: optional *shared* neck after the backbone (e.g. an mmdet ``FPN``): every task sees its
            outputs, and its parameters count as shared, so the gradient methods act on backbone +
            neck. A neck inside a task's config stays that task's own. This is how a user chooses
            what is shared: backbone only (necks in the tasks) or backbone + shared neck.
        **routing: the model-side methods, by their ``ROUTING`` registry name (``grad_split=dict(...)``:
            GradSplit; ``recon=dict(...)``: Recon; see ``projects/allinone/routing``). Each is built
            and attached after the tasks, and reached through the :class:`RoutingMethod` protocol
            only; :attr:`routing` holds them by name.
    """

    def __init__(self,
                 backbone: dict,
                 tasks: Dict[str, dict],
                 task_loss_weights: Optional[Dict[str, float]] = None,
                 neck: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg=None,
                 **routing):
        # the top-level preprocessor only moves data to the device; each task normalises its own
        super().__init__(data_preprocessor=data_preprocessor or dict(type='BaseDataPreprocessor'),
                         init_cfg=init_cfg)
        if not isinstance(tasks, dict) or not tasks:
            raise ValueError('model.tasks must be a non-empty dict {task_name: model config}, '
                             f'got {tasks!r}')
        self.backbone = MODELS.build(backbone)
        self.neck = MODELS.build(neck) if neck is not None else None
        self.tasks = ModuleDict()
        for name, cfg in tasks.items():
            if cfg is not None:  # `task=None` in a child config drops a task of its base
                self.tasks[name] = self._build_task(name, cfg)
        if not len(self.tasks):
            raise ValueError('model.tasks: every task is None; at least one task is needed')
        weights = dict(task_loss_weights or {})
        unknown = set(weights) - set(self.tasks)
        if unknown:
            raise KeyError(f'model.task_loss_weights names unknown task(s) {sorted(unknown)}; '
                           f'tasks are {list(self.tasks)}')
        self.task_loss_weights = {t: float(weights.get(t, 1.0)) for t in self.tasks}
        # which task's forward runs: read by the routing methods inside the shared layers
        self.task_context = TaskContext()
        self.routing: Dict[str, RoutingMethod] = OrderedDict()
        for key in routing_order(list(routing)):
            method = build_routing(key, routing[key], self, self.task_names, self.task_context)
            if method is not None:
                self.routing[key] = method

    @staticmethod
    def _build_task(name: str, cfg: dict) -> BaseModel:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f'task name {name!r} must be a python identifier (it prefixes log keys)')
        if not isinstance(cfg, dict) or 'type' not in cfg:
            raise ValueError(f'model.tasks.{name} must be a model config dict with a "type"')
        cfg = copy.deepcopy(dict(cfg))
        if 'backbone' in cfg:
            bb = cfg['backbone']
            if not (isinstance(bb, dict) and bb.get('type') == PASS_THROUGH):
                raise ValueError(f'model.tasks.{name} has a backbone of its own; the backbone is '
                                 'shared (model.backbone). To feed this task a subset of the '
                                 f"shared levels use backbone=dict(type='{PASS_THROUGH}', "
                                 'in_indices=[...]).')
        else:
            cfg['backbone'] = dict(type=PASS_THROUGH)
        model = ROOT_MODELS.build(cfg)
        if not isinstance(model, BaseModel) or not hasattr(model, 'loss') or not hasattr(model, 'predict'):
            raise TypeError(f'model.tasks.{name} built {type(model).__name__}, which is not an '
                            'OpenMMLab model with loss() and predict()')
        return model

    # ------------------------------------------------------------------ parameters
    @property
    def task_names(self) -> List[str]:
        return list(self.tasks.keys())

    def shared_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        """Trainable parameters every task's loss reaches (the backbone and the shared neck, if any)."""
        per_task = {id(p) for t in self.tasks for m in self.routing.values()  # e.g. Recon's copies
                    for _, p in m.task_parameters(self, t)}
        for n, p in self.backbone.named_parameters(prefix='backbone'):
            if p.requires_grad and id(p) not in per_task:
                yield n, p
        if self.neck is not None:
            for n, p in self.neck.named_parameters(prefix='neck'):
                if p.requires_grad and id(p) not in per_task:
                    yield n, p

    def task_parameters(self, task: str) -> Iterator[Tuple[str, nn.Parameter]]:
        """Trainable parameters only ``task``'s loss reaches (its necks, heads, and what routing methods give it)."""
        for n, p in self.tasks[task].named_parameters(prefix=f'tasks.{task}'):
            if p.requires_grad:
                yield n, p
        for method in self.routing.values():
            yield from method.task_parameters(self, task)

    def parameter_partition(self) -> Dict[str, List[nn.Parameter]]:
        """``{'shared': [...], task: [...]}`` for the per-task gradient optim wrapper."""
        part = OrderedDict(shared=[p for _, p in self.shared_parameters()])
        for t in self.tasks:
            part[t] = [p for _, p in self.task_parameters(t)]
        return part

    def init_weights(self):
        """Initialise every part; a pretrained backbone (``init_cfg=dict(type='Pretrained', ...)``) is
        loaded by mmengine as configured, and what loaded is logged by backbone module."""
        init_cfg = getattr(self.backbone, 'init_cfg', None)
        with recording_loads(self.backbone) as loads:
            super().init_weights()
        if pretrained_checkpoint(init_cfg) is not None and loads:
            source = describe_source(init_cfg)
            report = load_report(self.backbone, loads[0], plain_key=self._plain_backbone_key)
            check_load_report(report, source, pretrained_checkpoint(init_cfg)[1])
            level = logging.WARNING if report['missing'] or report['mismatched'] else logging.INFO
            print_log(format_load_report(report, source), logger='current', level=level)
        for method in self.routing.values():
            method.after_init_weights(self)

    def _plain_backbone_key(self, key: str) -> str:
        """A backbone state-dict key as a checkpoint of the plain backbone names it (routing methods)."""
        for method in self.routing.values():
            key = method.plain_key(key, 'backbone')
        return key

    # ------------------------------------------------------------------ forward
    def _check_task(self, task: str) -> BaseModel:
        if task not in self.tasks:
            raise KeyError(f'batch for unknown task {task!r}; the model has tasks {self.task_names}')
        return self.tasks[task]

    def extract_feat(self, inputs: torch.Tensor):
        feats = self.backbone(inputs)
        feats = tuple(feats) if isinstance(feats, (list, tuple)) else (feats, )
        if self.neck is not None:
            feats = self.neck(feats)
            feats = tuple(feats) if isinstance(feats, (list, tuple)) else (feats, )
        return feats

    def task_loss(self, task: str, batch: dict) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Preprocess ``batch`` with the task's own preprocessor and return its weighted loss."""
        model = self._check_task(task)
        batch = model.data_preprocessor(batch, True)
        with self.task_context.running(task, train=True):
            feats = self.extract_feat(batch['inputs'])
        losses = model.loss(feats, batch['data_samples'])
        loss, log_vars = self.parse_losses(losses)
        weight = self.task_loss_weights[task]
        if weight != 1.0:
            loss = loss * weight
        log_vars = OrderedDict((f'{task}.{k}' if k != 'loss' else f'{task}.loss', v) for k, v in log_vars.items())
        return loss, log_vars

    def train_step(self, data: Dict[str, dict], optim_wrapper: OptimWrapper) -> Dict[str, torch.Tensor]:
        if not isinstance(data, dict) or not data:
            raise TypeError('AllInOneModel.train_step expects {task_name: batch}; build the run with '
                            'MultiTaskTrainLoop (train_cfg.type)')
        log_vars = OrderedDict()
        per_task = isinstance(optim_wrapper, MultiTaskOptimWrapper)  # binds itself in optim_context
        total = 0.
        samples = optim_wrapper.gradient_samples if per_task else 1
        with optim_wrapper.optim_context(self):
            for task, batch in data.items():
                if batch is None and per_task:
                    # data parallel (MultiTaskDistributedDataParallel): another rank has a batch of
                    # this task, this one has not; it joins the task's collectives with no gradient
                    optim_wrapper.backward_task(task, None)
                    continue
                parts = [batch] if samples == 1 else split_batch(batch, samples, task)
                for part in parts:  # independent gradient samples of the task (SDMGrad, MoDo)
                    loss, task_logs = self.task_loss(task, part)
                    for k, v in task_logs.items():
                        log_vars[k] = log_vars.get(k, 0.) + v / len(parts)
                    if per_task:
                        optim_wrapper.backward_task(task, loss)
                    else:
                        total = total + loss
        if per_task:
            optim_wrapper.update_tasks()
        else:
            optim_wrapper.update_params(total)
        log_vars['loss'] = sum(v for k, v in log_vars.items() if k.endswith('.loss'))
        return log_vars

    def _predict_task(self, data: Dict[str, dict]) -> list:
        if not isinstance(data, dict) or len(data) != 1:
            raise TypeError('val_step/test_step expect {task_name: batch} with exactly one task')
        (task, batch), = data.items()
        model = self._check_task(task)
        batch = model.data_preprocessor(batch, False)
        with self.task_context.running(task):
            feats = self.extract_feat(batch['inputs'])
        return model.predict(feats, batch['data_samples'])

    def val_step(self, data: Dict[str, dict]) -> list:
        return self._predict_task(data)

    def test_step(self, data: Dict[str, dict]) -> list:
        return self._predict_task(data)

    def forward(self,
                inputs: torch.Tensor,
                data_samples: Optional[list] = None,
                mode: str = 'tensor',
                task: Optional[str] = None) -> Union[dict, list, tuple]:
        """Run one task on already preprocessed ``inputs`` (``mode`` as in every OpenMMLab model).

        ``task=None`` with ``mode='tensor'`` returns the shared backbone features.
        """
        with self.task_context.running(task, train=mode == 'loss'):
            feats = self.extract_feat(inputs)
        if task is None:
            if mode != 'tensor':
                raise ValueError(f'mode={mode!r} needs a task (one of {self.task_names})')
            return feats
        model = self._check_task(task)
        if mode == 'loss':
            return model.loss(feats, data_samples)
        if mode == 'predict':
            return model.predict(feats, data_samples)
        if mode == 'tensor':
            return model._forward(feats, data_samples)
        raise ValueError(f'invalid mode {mode!r}; use loss, predict or tensor')
