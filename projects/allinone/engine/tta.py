"""Test-time augmentation per task with each library's own TTA model (``tools/test.py --tta``).

mmengine's TTA: a ``TestTimeAug`` test pipeline gives every image several views (flips, scales); a
``BaseTTAModel`` runs the model on each view and merges the predictions. The merge is the
library's: mmdet ``DetTTAModel`` (boxes mapped back to the image, then NMS), mmseg ``SegTTAModel``
(mean of the per-view softmax maps, each already flipped back and resized to the image), mmpretrain
``AverageClsScoreTTA`` (mean of the scores). :class:`MultiTaskTTAModel` wraps the AllInOneModel and
gives each task its library's TTA model on a :class:`TaskView` of the model; a task without an
entry is tested as usual. Config (one entry per task; ``tta_pipeline`` replaces the task's test
pipeline when ``--tta`` is given)::

    tta_model = dict(type='MultiTaskTTAModel', tta=dict(
        det=dict(type='DetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.6), max_per_img=300)),
        seg=dict(_scope_='mmseg', type='SegTTAModel'),
        cls=dict(_scope_='mmpretrain', type='AverageClsScoreTTA')))
    tta_pipeline = dict(det=[...TestTimeAug...], seg=[...], cls=[...])

The libraries' classes are used as they are: mmdet 3.3's returns an image without any detection as
its first view's (empty) prediction, mmseg 1.2's keeps ``gt_sem_seg`` only where there is one, so
unlabeled test images go through both.
"""
import copy
from typing import Dict, List, Optional

from mmengine.config import Config
from mmengine.model import BaseTTAModel
from mmengine.registry import MODELS as ROOT_MODELS
from torch import nn

from ..registry import MODELS


class TaskView(nn.Module):
    """One task of an AllInOneModel as a single-task model, for a library's TTA model.

    ``test_step(batch)`` runs ``model.test_step({task: batch})``; other attributes (``out_channels``,
    ``decode_head``, ... that a TTA model reads) are the task model's. Held outside the module tree of
    :class:`MultiTaskTTAModel`, so the weights are not listed twice.
    """

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.model, self.task = model, task

    def test_step(self, data):
        return self.model.test_step({self.task: data})

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model.tasks[self.task], name)


@MODELS.register_module()
class MultiTaskTTAModel(BaseTTAModel):
    """The AllInOneModel (``module``) with a library TTA model per task (``tta={task: cfg}``).

    The checkpoint loads into ``module`` as usual (mmengine unwraps TTA models when loading).
    """

    def __init__(self, module, tta: Dict[str, Optional[dict]], data_preprocessor=None):
        super().__init__(module=module, data_preprocessor=data_preprocessor)
        tasks = list(getattr(self.module, 'task_names', []))
        unknown = [t for t, c in tta.items() if c is not None and t not in tasks]
        if unknown:
            raise KeyError(f'tta_model.tta names task(s) {unknown} the model does not have ({tasks})')
        self._task_tta = {}  # plain dict: the TTA models own no weights, the views point at self.module
        for task, cfg in tta.items():
            if cfg is not None:  # built in the library of its `_scope_` (mmseg, mmpretrain; mmdet by default)
                self._task_tta[task] = ROOT_MODELS.build(dict(cfg, module=TaskView(self.module, task)))

    @property
    def task_names(self) -> List[str]:
        return self.module.task_names

    @property
    def tta_tasks(self) -> List[str]:
        return list(self._task_tta)

    def test_step(self, data: Dict[str, dict]) -> list:
        if not isinstance(data, dict) or len(data) != 1:
            raise TypeError('MultiTaskTTAModel.test_step expects {task_name: batch} with exactly one task')
        (task, batch), = data.items()
        if task in self._task_tta:
            return self._task_tta[task].test_step(batch)
        return self.module.test_step(data)

    val_step = test_step

    def merge_preds(self, data_samples_list):
        raise NotImplementedError('MultiTaskTTAModel merges nothing itself: each task\'s TTA model does')


def use_tta(cfg: Config) -> List[str]:
    """``--tta``: wrap ``cfg.model`` in ``cfg.tta_model`` and give each listed task its ``tta_pipeline``.

    Returns the tasks tested with augmentation. A task set to None in the model (a child config that
    drops it) is skipped; a pipeline for a task that is not tested is an error.
    """
    if not cfg.get('tta_model') or not cfg.get('tta_pipeline'):
        raise SystemExit('--tta: the config has no tta_model / tta_pipeline (docs/training_recipes.md: '
                         'test-time augmentation)')
    tasks = [t for t, c in cfg.model.get('tasks', {}).items() if c is not None]
    loaders = copy.deepcopy(cfg.test_dataloader)
    used = []
    for task in tasks:  # model order
        pipeline = cfg.tta_pipeline.get(task)
        if pipeline is None:
            continue
        if task not in loaders or loaders[task] is None:
            raise KeyError(f'tta_pipeline.{task}: the config has no test_dataloader.{task}')
        loaders[task].dataset.pipeline = copy.deepcopy(pipeline)
        used.append(task)
    tta = {t: c for t, c in cfg.tta_model.get('tta', {}).items() if t in tasks}
    missing = [t for t in used if t not in tta] + [t for t in tta if t not in used]
    if missing:
        raise KeyError(f'--tta: task(s) {missing} need both a tta_pipeline and a tta_model.tta entry')
    cfg.test_dataloader = loaders
    cfg.model = dict(copy.deepcopy(dict(cfg.tta_model)), tta=tta, module=cfg.model)
    return used


__all__ = ['MultiTaskTTAModel', 'TaskView', 'use_tta']
