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


def use_unlabeled_images(cfg: Config, task: str, images: str, image_list: Optional[str] = None) -> None:
    """Replace ``cfg.test_dataloader[task]``'s dataset by :class:`UnlabeledImageDataset`.

    The task keeps its test pipeline minus the transforms that load labels, its metainfo (class
    names) and its ``_scope_``; its evaluator is removed, so the test loop only predicts (and
    exports with ``--submit``). Detection category ids come from ``image_list`` if it is a COCO json
    with categories, else from the task's configured test/val/train annotation file.
    """
    loaders = cfg.get('test_dataloader')
    if not isinstance(loaders, dict) or task not in loaders:
        known = list(loaders) if isinstance(loaders, dict) else []
        raise KeyError(f'--images {task}=...: the config has no test_dataloader.{task} (tasks: {known})')
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
