"""Point a task's test set at unlabeled images (``tools/test.py --images``)."""
import copy
import os.path as osp
from typing import Optional

from mmengine.config import Config

#: transforms that read labels; an unlabeled test set has none to read
LABEL_TRANSFORMS = ('LoadAnnotations', 'LoadPanopticAnnotations', 'LoadDepthAnnotation')


def _coco_ann_of(dataset: dict) -> Optional[str]:
    """The COCO json a labeled dataset config reads (its category ids are the submission's)."""
    ann = dataset.get('ann_file')
    if not ann or not str(ann).endswith('.json'):
        return None
    root = dataset.get('data_root') or ''
    path = ann if osp.isabs(ann) else osp.join(root, ann)
    return path if osp.isfile(path) else None


def without_label_transforms(pipeline: list) -> list:
    """``pipeline`` without the transforms that read labels, inside ``TestTimeAug``'s views too."""
    out = []
    for t in pipeline:
        if t.get('type') in LABEL_TRANSFORMS:
            continue
        if t.get('type') == 'TestTimeAug':
            t = dict(t, transforms=[kept for kept in (without_label_transforms(step) for step in t['transforms'])
                                    if kept])
        out.append(t)
    return out


def resolve_task(cfg: Config, name: str, option: str = '--images') -> str:
    """The config's task for ``name``: a task name (``det``) or its key in the challenge file (``dec``).

    The keys are ``test_cfg.submission.keys`` (``dict(det='dec')`` in the configs); a name that is
    neither is an error listing both.
    """
    loaders = cfg.get('test_dataloader')
    tasks = [t for t, v in loaders.items() if v is not None] if isinstance(loaders, dict) else []
    if name in tasks:
        return name
    keys = dict(((cfg.get('test_cfg') or {}).get('submission') or {}).get('keys') or {})
    by_key = {k: t for t, k in keys.items() if t in tasks}
    if name in by_key:
        return by_key[name]
    named = ', '.join(f'{t} (file key {keys[t]})' if keys.get(t, t) != t else t for t in tasks)
    raise KeyError(f'{option} {name}=...: the config has no task {name!r}; its tasks are {named}')


def use_unlabeled_images(cfg: Config, task: str, images: str, image_list: Optional[str] = None) -> None:
    """Replace ``cfg.test_dataloader[task]``'s dataset by :class:`UnlabeledImageDataset`.

    ``task`` is a task name or its key in the submission file (:func:`resolve_task`). The task keeps
    its test pipeline minus the transforms that load labels, its metainfo (class
    names) and its ``_scope_``; its evaluator is removed, so the test loop only predicts (and
    exports with ``--submit``). Detection category ids come from ``image_list`` if it is a COCO json
    with categories, else from the task's configured test/val/train annotation file.
    """
    task = resolve_task(cfg, task)
    loaders = cfg.get('test_dataloader')
    if not osp.isdir(images):
        raise FileNotFoundError(f'--images {task}={images}: not a folder')
    if image_list is not None and not osp.isfile(image_list):
        raise FileNotFoundError(f'--image-list {task}={image_list}: file not found')
    loader = copy.deepcopy(loaders[task])
    old = loader['dataset']
    pipeline = without_label_transforms(old.get('pipeline', []))
    categories = None
    for section in ('test_dataloader', 'val_dataloader', 'train_dataloader'):
        ds = (cfg.get(section) or {}).get(task, {}).get('dataset', {})
        categories = _coco_ann_of(ds)
        if categories:
            break
    new = dict(type='UnlabeledImageDataset', data_root='', data_prefix=dict(img=images),
               ann_file=image_list or '', metainfo=old.get('metainfo'), pipeline=pipeline,
               categories_file=categories)
    if '_scope_' in old:
        new['_scope_'] = old['_scope_']
    loader['dataset'] = new
    loaders[task] = loader
    cfg.test_dataloader = loaders
    evaluators = cfg.get('test_evaluator')
    if isinstance(evaluators, dict) and task in evaluators:
        evaluators = copy.deepcopy(evaluators)
        evaluators[task] = None  # format only
        cfg.test_evaluator = evaluators
