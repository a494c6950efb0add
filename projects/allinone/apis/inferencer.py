"""Run an AllInOne checkpoint on any images: every task's predictions and a picture per image."""
import copy
import functools
import json
import logging
import os
import os.path as osp
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Union

import mmcv
import numpy as np
import torch
from mmengine.config import Config, ConfigDict
from mmengine.dataset import Compose
from mmengine.fileio import isdir, join_path, list_dir_or_file
from mmengine.infer import BaseInferencer
from mmengine.logging import print_log
from mmengine.registry import DATASETS, FUNCTIONS, MODELS, TRANSFORMS, DefaultScope, init_default_scope
from mmengine.runner import CheckpointLoader

from ..utils.unlabeled import LABEL_TRANSFORMS
from ..visualization.visualizer import MultiTaskVisualizer, safe_name, sample_kind

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
LOADERS = ('LoadImageFromFile', )
InputType = Union[str, np.ndarray]


def list_images(folder: str) -> List[str]:
    """The image files of ``folder`` (by extension), sorted; an error naming it when there is none."""
    names = sorted(n for n in list_dir_or_file(folder, list_dir=False) if n.lower().endswith(IMG_EXTENSIONS))
    if not names:
        raise FileNotFoundError(f'{folder}: no image files ({", ".join(IMG_EXTENSIONS)})')
    return [join_path(folder, n) for n in names]


class ImageReadError(RuntimeError):
    """An input image could not be read; the message names it."""


class _TaskLoader:
    """The task's own ``LoadImageFromFile`` for a path; an array (BGR, as OpenCV reads) is taken as is."""

    def __init__(self, load_cfg: dict):
        self.load = TRANSFORMS.build(load_cfg)

    def __call__(self, item: InputType) -> dict:
        if isinstance(item, np.ndarray):
            img = item if item.ndim == 3 else np.repeat(item[..., None], 3, axis=2)
            return dict(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2])
        try:
            results = self.load(dict(img_path=item))
        except Exception as e:  # missing file, undecodable bytes: named, the other images go on
            raise ImageReadError(f'{item}: cannot read the image ({type(e).__name__}: {e})') from e
        if results is None:
            raise ImageReadError(f'{item}: cannot read the image (empty)')
        return results


class AllInOneInferencer(BaseInferencer):
    """mmengine ``BaseInferencer`` for an AllInOne multi-task model.

    Built from a config and a checkpoint; runs each image through every chosen task as
    ``tools/test.py`` does (the task's test pipeline without its label transforms, its data
    preprocessor, the model's ``test_step``), so the predictions for an image are the test loop's.

    Args:
        model: config file path or ``Config``.
        weights: checkpoint path.
        device: ``'cpu'``, ``'cuda'``, ... (default: what is available).
        tasks: the tasks to run (default: every task of the config the checkpoint has weights for).
        scope: default registry scope (the config's ``default_scope``, else ``'mmdet'``).
        show_progress: a progress bar over the images.
        min_size: pictures of smaller images are drawn enlarged to this short side.

    Call ``inferencer(inputs, batch_size=1, tasks=None, return_vis=False, out_dir='',
    pred_score_thr=0.3, return_datasamples=False, no_save_vis=False, no_save_pred=False,
    print_result=False)``; inputs are image paths, BGR arrays, or a folder; ``tasks`` a subset of
    the loaded tasks for this call. Returns ``{'predictions': [...], 'visualization':
    [...], 'errors': [...]}``: per image ``{'input': name, task: {...}}`` with, by what the task
    predicts, ``bboxes`` (x1, y1, x2, y2 in the input's pixels) + ``scores`` + ``labels`` +
    ``label_names``; ``sem_seg`` (an H x W label map; in the saved JSON a PNG path) + ``classes``;
    or ``pred_label`` + ``pred_class`` + ``pred_score`` + ``pred_scores``. An image that cannot be
    read is listed in ``errors`` (named) and the others are processed. With ``out_dir``:
    ``OUT/vis/<name>.png`` (a panel per task) and ``OUT/predictions.json`` (+ ``OUT/preds/`` for
    label maps).
    """
    preprocess_kwargs: set = set()
    forward_kwargs: set = set()
    visualize_kwargs: set = {'return_vis', 'show', 'wait_time', 'draw_pred', 'pred_score_thr', 'img_out_dir',
                             'no_save_vis'}
    postprocess_kwargs: set = {'print_result', 'pred_out_dir', 'no_save_pred'}

    def __init__(self, model: Union[str, Config], weights: Optional[str] = None, device: Optional[str] = None,
                 tasks: Optional[Sequence[str]] = None, scope: Optional[str] = None, show_progress: bool = True,
                 min_size: int = 320):
        if isinstance(model, str):
            if not osp.isfile(model):
                raise FileNotFoundError(f'config file not found: {model}')
            model = Config.fromfile(model)
        self.requested_tasks = None if tasks is None else list(tasks)
        self.min_size = min_size
        scope = scope or model.get('default_scope') or 'mmdet'
        init_default_scope(scope)
        super().__init__(model=model, weights=weights, device=device, scope=scope, show_progress=show_progress)

    # ------------------------------------------------------------------ building
    def _init_model(self, cfg: ConfigDict, weights: Optional[str], device: str = 'cpu') -> torch.nn.Module:
        if weights is None:
            raise ValueError('AllInOneInferencer needs a checkpoint (weights=...)')
        if not osp.isfile(weights):
            raise FileNotFoundError(f'checkpoint not found: {weights}')
        tasks_cfg = OrderedDict((t, v) for t, v in cfg.model.tasks.items() if v is not None)
        checkpoint = CheckpointLoader.load_checkpoint(weights, map_location='cpu')
        state = checkpoint.get('state_dict', checkpoint)
        state = OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v) for k, v in state.items())
        have = [t for t in tasks_cfg if any(k.startswith(f'tasks.{t}.') for k in state)]
        if self.requested_tasks is not None:
            unknown = [t for t in self.requested_tasks if t not in tasks_cfg]
            if unknown:
                raise KeyError(f'task(s) {unknown} are not tasks of the config (its tasks: {list(tasks_cfg)})')
            absent = [t for t in self.requested_tasks if t not in have]
            if absent:
                raise KeyError(f'checkpoint {weights} has no weights for task(s) {absent} (it has {have})')
            tasks = [t for t in tasks_cfg if t in self.requested_tasks]
        else:
            tasks = have
            if not tasks:
                raise KeyError(f'checkpoint {weights} has weights for none of the config\'s tasks {list(tasks_cfg)}')
            if len(tasks) < len(tasks_cfg):
                print_log(f'checkpoint {weights} has no weights for task(s) '
                          f'{[t for t in tasks_cfg if t not in tasks]}: running {tasks}', logger='current')
        self.tasks = tasks
        cfg = copy.deepcopy(cfg)
        cfg.model.tasks = {t: (v if t in tasks else None) for t, v in cfg.model.tasks.items()}
        if len(tasks) < len(tasks_cfg):  # settings sized or keyed by the full task list
            if cfg.model.get('task_loss_weights'):
                cfg.model.task_loss_weights = {t: w for t, w in cfg.model.task_loss_weights.items() if t in tasks}
            if cfg.model.get('grad_split'):  # training-only routing: no weights, inference is the plain network
                cfg.model.grad_split = None
        model = MODELS.build(cfg.model)
        dropped = [t for t in tasks_cfg if t not in tasks]
        state = OrderedDict((k, v) for k, v in state.items()
                            if not any(k.startswith(f'tasks.{t}.') or f'.copies.{t}.' in k for t in dropped))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise KeyError(f'checkpoint {weights} does not fit the config\'s model: missing keys {missing[:5]}'
                           f'{"..." if len(missing) > 5 else ""}, unexpected keys {unexpected[:5]}'
                           f'{"..." if len(unexpected) > 5 else ""}')
        model.cfg = cfg
        model.to(device)
        model.eval()
        return model

    @staticmethod
    def _loader_cfg(cfg: ConfigDict, task: str) -> dict:
        for section in ('test_dataloader', 'val_dataloader'):
            loaders = cfg.get(section)
            if isinstance(loaders, dict) and loaders.get(task) is not None:
                return loaders[task]
        raise KeyError(f'the config has no test_dataloader.{task} (nor val_dataloader.{task}): the '
                       'inferencer takes the task\'s test pipeline and class names from it')

    def _task_scope(self, dataset: dict) -> str:
        return dataset.get('_scope_') or self.scope

    def _dataset_meta(self, dataset: dict) -> dict:
        """The dataset's metainfo (class names, palette) without reading its annotation files."""
        with DATASETS.switch_scope_and_registry(self._task_scope(dataset)) as registry:
            dataset_cls = registry.get(dataset['type'])
        if dataset_cls is None:
            raise KeyError(f"dataset type {dataset['type']!r} is not registered")
        meta = copy.deepcopy(dict(getattr(dataset_cls, 'METAINFO', {}) or {}))
        meta.update(copy.deepcopy(dict(dataset.get('metainfo') or {})))
        return meta

    def _init_pipeline(self, cfg: ConfigDict) -> Dict[str, Compose]:
        """Each task's test pipeline, minus the transforms that read labels; any image loader."""
        pipelines, self.dataset_metas = OrderedDict(), OrderedDict()
        for task in self.tasks:
            dataset = self._loader_cfg(cfg, task)['dataset']
            steps = [copy.deepcopy(dict(t)) for t in dataset.get('pipeline', [])
                     if t.get('type') not in LABEL_TRANSFORMS]
            if not steps or steps[0].get('type') not in LOADERS:
                raise ValueError(f'test_dataloader.{task}: the test pipeline should start with one of {LOADERS}, '
                                 f'got {steps[0].get("type") if steps else "nothing"}')
            with DefaultScope.overwrite_default_scope(self._task_scope(dataset)):
                pipelines[task] = Compose([_TaskLoader(steps[0])] + steps[1:])
            self.dataset_metas[task] = self._dataset_meta(dataset)
        return pipelines

    def _init_collate(self, cfg: ConfigDict) -> Dict[str, callable]:
        out = {}
        for task in self.tasks:
            collate_cfg = copy.deepcopy(dict(self._loader_cfg(cfg, task).get('collate_fn') or {}))
            kind = collate_cfg.pop('type', 'pseudo_collate')
            fn = kind if callable(kind) else FUNCTIONS.get(kind)  # as Runner.build_dataloader finds it
            if fn is None:
                raise KeyError(f'test_dataloader.{task}.collate_fn: {kind!r} is not a registered function')
            out[task] = functools.partial(fn, **collate_cfg)
        return out

    def _init_visualizer(self, cfg: ConfigDict) -> MultiTaskVisualizer:
        return MultiTaskVisualizer(name=f'allinone_inferencer_{id(self)}', dataset_metas=self.dataset_metas,
                                   min_size=self.min_size)

    # ------------------------------------------------------------------ running
    def _inputs_to_list(self, inputs) -> list:
        if isinstance(inputs, str) and isdir(inputs):
            return list_images(inputs)
        if isinstance(inputs, (list, tuple)):
            return list(inputs)
        return [inputs]

    @staticmethod
    def input_names(inputs: list) -> List[str]:
        """A distinct file-name-safe name per input (the image's name; arrays by position)."""
        names, seen = [], set()
        for i, item in enumerate(inputs):
            name = safe_name(osp.splitext(osp.basename(item))[0]) if isinstance(item, str) else f'{i:08d}'
            if name in seen:
                name = f'{name}_{i}'
            seen.add(name)
            names.append(name)
        return names

    @torch.no_grad()
    def forward(self, inputs: dict, **kwargs) -> list:
        """``inputs`` is ``{task: collated batch}``: that task's ``test_step``, as the test loop runs it."""
        return self.model.test_step(inputs)

    def _run_chunk(self, items: list, errors: list, tasks: List[str]) -> tuple:
        """Predictions ``[{task: data sample}]`` for the readable items, and their positions."""
        data = {t: [] for t in tasks}
        ok = []
        for i, item in enumerate(items):
            try:
                per_task = {t: self.pipeline[t](item) for t in tasks}
            except ImageReadError as e:
                errors.append(dict(input=item if isinstance(item, str) else f'array {i}', error=str(e)))
                print_log(f'skipped: {e}', logger='current', level=logging.WARNING)
                continue
            ok.append(i)
            for t in tasks:
                data[t].append(per_task[t])
        samples = [OrderedDict() for _ in ok]
        if ok:
            for t in tasks:
                for k, s in enumerate(self.forward({t: self.collate_fn[t](data[t])})):
                    samples[k][t] = s
        return ok, samples

    def __call__(self, inputs, batch_size: int = 1, return_datasamples: bool = False, out_dir: str = '',
                 tasks: Optional[Sequence[str]] = None, **kwargs) -> dict:
        from tqdm import tqdm
        if tasks is None:
            tasks = self.tasks
        elif any(t not in self.tasks for t in tasks):
            raise KeyError(f'tasks {[t for t in tasks if t not in self.tasks]} are not loaded (the inferencer '
                           f'runs {self.tasks})')
        tasks = [t for t in self.tasks if t in tasks]
        kwargs.setdefault('img_out_dir', out_dir)
        kwargs.setdefault('pred_out_dir', out_dir)
        _, _, vis_kwargs, post_kwargs = self._dispatch_kwargs(**kwargs)
        items = self._inputs_to_list(inputs)
        names = self.input_names(items)
        preds, visualization, errors = [], [], []
        bar = tqdm(total=len(items), desc='infer', unit='img', disable=not self.show_progress)
        for start in range(0, len(items), max(1, batch_size)):
            chunk = items[start:start + batch_size]
            ok, samples = self._run_chunk(chunk, errors, tasks)
            kept = [(names[start + i], chunk[i]) for i in ok]
            visualization += self.visualize(kept, samples, **vis_kwargs) or []
            preds += [(n, s) for (n, _), s in zip(kept, samples)]
            bar.update(len(chunk))
        bar.close()
        results = self.postprocess(preds, visualization, return_datasamples, **post_kwargs)
        results['errors'] = errors
        return results

    # ------------------------------------------------------------------ output
    @staticmethod
    def _rgb(item: InputType) -> np.ndarray:
        if isinstance(item, str):
            return mmcv.imread(item, channel_order='rgb')
        img = item if item.ndim == 3 else np.repeat(item[..., None], 3, axis=2)
        return mmcv.bgr2rgb(img)

    def caption(self, task: str, sample, pred_score_thr: float) -> str:
        """A panel's caption: the task and what it predicted."""
        kind = sample_kind(sample)
        classes = self.dataset_metas.get(task, {}).get('classes')
        if kind == 'detection':
            n = int((sample.pred_instances.scores > pred_score_thr).sum())
            return f'{task}: {n} box{"es" if n != 1 else ""} (score > {pred_score_thr:g})'
        if kind == 'segmentation':
            ids = torch.unique(sample.pred_sem_seg.data).tolist()
            return f'{task}: {len(ids)} class{"es" if len(ids) != 1 else ""} in the label map'
        label = int(sample.pred_label[0])
        name = classes[label] if classes and label < len(classes) else str(label)
        return f'{task}: {name} ({float(sample.pred_score[label]):.2f})'

    def visualize(self, inputs: list, preds: list, return_vis: bool = False, show: bool = False,
                  wait_time: float = 0, draw_pred: bool = True, pred_score_thr: float = 0.3,
                  img_out_dir: str = '', no_save_vis: bool = False) -> List[np.ndarray]:
        """A picture per image: a panel per task, drawn by the task's library (``inputs``: (name, item))."""
        save = bool(img_out_dir) and not no_save_vis
        if not (return_vis or show or save):
            return []
        out = []
        for (name, item), samples in zip(inputs, preds):
            captions = {t: self.caption(t, s, pred_score_thr) for t, s in samples.items()}
            drawn = self.visualizer.draw_tasks(self._rgb(item), samples, draw_gt=False, draw_pred=draw_pred,
                                               pred_score_thr=pred_score_thr, captions=captions)
            if show:
                self.visualizer.show(drawn, win_name=name, wait_time=wait_time)
            if save:
                os.makedirs(osp.join(img_out_dir, 'vis'), exist_ok=True)
                mmcv.imwrite(mmcv.rgb2bgr(drawn), osp.join(img_out_dir, 'vis', f'{name}.png'))
            if return_vis:
                out.append(drawn)
        return out

    def pred2dict(self, task: str, sample) -> dict:
        """A task's prediction as plain python (numpy for a label map)."""
        kind = sample_kind(sample)
        classes = list(self.dataset_metas.get(task, {}).get('classes') or [])
        name = (lambda i: classes[i] if i < len(classes) else str(i))  # noqa: E731
        if kind == 'detection':
            inst = sample.pred_instances
            labels = inst.labels.cpu().tolist()
            return dict(bboxes=inst.bboxes.cpu().float().tolist(), scores=inst.scores.cpu().float().tolist(),
                        labels=labels, label_names=[name(i) for i in labels])
        if kind == 'segmentation':
            return dict(sem_seg=sample.pred_sem_seg.data[0].cpu().numpy(), classes=classes)
        scores = sample.pred_score.cpu().float()
        label = int(sample.pred_label[0])
        return dict(pred_label=label, pred_class=name(label), pred_score=float(scores[label]),
                    pred_scores=scores.tolist())

    def postprocess(self, preds: list, visualization: list, return_datasamples: bool = False,
                    print_result: bool = False, pred_out_dir: str = '', no_save_pred: bool = False) -> dict:
        """``preds`` is ``[(name, {task: data sample})]``; with ``pred_out_dir`` writes ``predictions.json``."""
        if return_datasamples:
            predictions = [OrderedDict(input=n, **s) for n, s in preds]
        else:
            predictions = [OrderedDict([('input', n)] + [(t, self.pred2dict(t, s)) for t, s in ss.items()])
                           for n, ss in preds]
        if pred_out_dir and not no_save_pred:
            self.dump_predictions(predictions if not return_datasamples else
                                  [OrderedDict([('input', n)] + [(t, self.pred2dict(t, s)) for t, s in ss.items()])
                                   for n, ss in preds], pred_out_dir)
        if print_result:
            print(predictions)
        return dict(predictions=predictions, visualization=visualization)

    @staticmethod
    def dump_predictions(predictions: List[dict], out_dir: str) -> str:
        """``OUT/predictions.json``; label maps become PNGs under ``OUT/preds/`` (path + class shares)."""
        os.makedirs(out_dir, exist_ok=True)
        records = []
        for p in predictions:
            rec = OrderedDict()
            for task, value in p.items():
                if isinstance(value, dict) and 'sem_seg' in value:
                    label_map = np.asarray(value['sem_seg'])
                    path = osp.join(out_dir, 'preds', f"{p['input']}_{task}.png")
                    os.makedirs(osp.dirname(path), exist_ok=True)
                    mmcv.imwrite(label_map.astype(np.uint8 if label_map.max() < 256 else np.uint16), path)
                    ids, counts = np.unique(label_map, return_counts=True)
                    classes = value.get('classes') or []
                    value = OrderedDict(label_map=osp.relpath(path, out_dir), shape=list(label_map.shape),
                                        class_fractions={(classes[i] if i < len(classes) else str(i)):
                                                         round(float(c) / label_map.size, 5)
                                                         for i, c in zip(ids.tolist(), counts.tolist())})
                rec[task] = value
            records.append(rec)
        path = osp.join(out_dir, 'predictions.json')
        with open(path, 'w') as f:
            json.dump(records, f, indent=1)
        return path
