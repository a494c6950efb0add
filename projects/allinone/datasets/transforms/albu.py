"""albumentations inside OpenMMLab pipelines, with boxes, masks and labels kept consistent."""
import warnings
from typing import Sequence

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.registry import TRANSFORMS


def _build(cfg):
    import albumentations as A
    cfg = dict(cfg)
    kind = cfg.pop('type')
    if not hasattr(A, kind):
        raise KeyError(f'albumentations has no transform {kind!r}')
    if 'transforms' in cfg:  # OneOf, SomeOf, Sequential, ...
        cfg['transforms'] = [_build(c) for c in cfg['transforms']]
    return getattr(A, kind)(**cfg)


@TRANSFORMS.register_module()
class AlbuAugment(BaseTransform):
    """Apply an albumentations pipeline to ``img`` and move ``gt_bboxes``/``gt_seg_map`` with it.

    Pixel-level ops (colour, blur, noise, weather) change the image only; spatial ops move the
    detection boxes (dropping those left with less than ``min_visibility`` of their area, together
    with their labels and ignore flags) and the segmentation map (nearest interpolation; set
    ``fill_mask=255`` on spatial ops so new border pixels are 'ignore'). Works for detection,
    segmentation and classification samples alike.

    Its random draws follow numpy's global random state (seeded by the run's ``randomness.seed``).

    Args:
        transforms: albumentations transform configs, e.g. ``dict(type='RandomBrightnessContrast', p=0.5)``.
        min_visibility: fraction of a box's area that must stay inside the image to keep the box.
    """

    BOX_KEYS = ('gt_bboxes_labels', 'gt_ignore_flags')

    def __init__(self, transforms: Sequence[dict], min_visibility: float = 0.3):
        import albumentations as A
        self.transforms_cfg = [dict(t) for t in transforms]
        with warnings.catch_warnings():  # "no transform to process bboxes" for pixel-level-only lists
            warnings.simplefilter('ignore', UserWarning)
            self.aug = A.Compose([_build(t) for t in transforms],
                                 bbox_params=A.BboxParams(format='pascal_voc', label_fields=['box_index'],
                                                          min_visibility=min_visibility, clip=True))

    def transform(self, results: dict) -> dict:
        # albumentations 2 draws from generators of its own, seeded from OS entropy: without this,
        # two runs with the same seed (or a resumed run) would augment differently
        self.aug.set_random_seed(int(np.random.randint(2 ** 31)))
        img = results['img']
        h, w = img.shape[:2]
        boxes = results.get('gt_bboxes')
        if boxes is not None:
            arr = boxes.tensor.numpy() if hasattr(boxes, 'tensor') else np.asarray(boxes, np.float32)
            arr = arr.reshape(-1, 4).copy()
            arr[:, 0::2] = arr[:, 0::2].clip(0, w)
            arr[:, 1::2] = arr[:, 1::2].clip(0, h)
            valid = np.where((arr[:, 2] > arr[:, 0]) & (arr[:, 3] > arr[:, 1]))[0]
        else:
            arr, valid = np.zeros((0, 4), np.float32), np.zeros(0, int)
        inputs = dict(image=img, bboxes=arr[valid], box_index=valid.tolist())
        if results.get('gt_seg_map') is not None:
            inputs['mask'] = results['gt_seg_map']
        out = self.aug(**inputs)
        results['img'] = out['image']
        results['img_shape'] = out['image'].shape[:2]
        if 'mask' in inputs:
            results['gt_seg_map'] = out['mask']
        if boxes is not None:
            keep = np.asarray(out['box_index'], dtype=np.int64)
            new = np.asarray(out['bboxes'], dtype=np.float32).reshape(-1, 4)
            results['gt_bboxes'] = type(boxes)(new) if hasattr(boxes, 'tensor') else new
            for key in self.BOX_KEYS:
                if key in results:
                    results[key] = np.asarray(results[key])[keep]
        return results

    def __repr__(self):
        return f'{type(self).__name__}(transforms={self.transforms_cfg})'
