"""Draw each task's samples with its own library's visualiser, and put the tasks side by side."""
import re
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import mmcv
import numpy as np
import torch
import torch.nn.functional as F
from mmengine.registry import VISUALIZERS
from mmengine.structures import InstanceData, PixelData
from mmengine.visualization import Visualizer

#: what a data sample holds -> the library that draws it
KINDS = ('detection', 'segmentation', 'classification')


def sample_kind(sample) -> str:
    """``'detection'``, ``'segmentation'`` or ``'classification'``, from the fields the sample holds.

    The task's name is not looked at: a task is drawn by what its model predicts (instances: mmdet;
    a label map: mmseg; a class: mmpretrain)."""
    fields = set(sample.keys()) if hasattr(sample, 'keys') else set()
    if fields & {'pred_instances', 'gt_instances'}:
        return 'detection'
    if fields & {'pred_sem_seg', 'gt_sem_seg'}:
        return 'segmentation'
    if fields & {'pred_label', 'gt_label', 'pred_score'}:
        return 'classification'
    raise TypeError(f'{type(sample).__name__} holds none of pred_instances / gt_instances (detection), '
                    f'pred_sem_seg / gt_sem_seg (segmentation), pred_label / gt_label (classification); '
                    f'its fields: {sorted(fields)}')


def default_palette(n: int) -> List[Tuple[int, int, int]]:
    """``n`` distinct colours (fixed seed) for a dataset whose metainfo has no palette."""
    rng = np.random.RandomState(42)
    return [tuple(int(c) for c in rng.randint(0, 256, 3)) for _ in range(n)]


def _boxes_tensor(boxes) -> torch.Tensor:
    from mmdet.structures.bbox import get_box_tensor
    return get_box_tensor(boxes).float()


def rescale_sample(sample, factor: float, shape: Tuple[int, int]):
    """A copy of ``sample`` drawn on an image resized by ``factor`` to ``shape`` (h, w).

    Boxes (mmdet box structures become plain tensors) are scaled, label maps resized with nearest
    neighbour; other fields are kept. Used to draw small images larger, so that the libraries'
    text and lines stay legible."""
    out = sample.clone()
    for key in ('gt_instances', 'pred_instances', 'ignored_instances'):
        if key in out:
            inst = getattr(out, key)
            new = InstanceData(metainfo=inst.metainfo)
            for k, v in inst.items():
                if k == 'bboxes':
                    v = _boxes_tensor(v) * factor
                elif k == 'masks':
                    raise NotImplementedError('instance masks are not rescaled')
                new[k] = v
            setattr(out, key, new)
    for key in ('gt_sem_seg', 'pred_sem_seg'):
        if key in out:
            pix = getattr(out, key)
            data = pix.data
            resized = F.interpolate(data[None].float(), size=shape, mode='nearest')[0].to(data.dtype)
            setattr(out, key, PixelData(data=resized, metainfo=pix.metainfo))
    return out


@VISUALIZERS.register_module()
class MultiTaskVisualizer(Visualizer):
    """Draws a sample of any AllInOne task with the visualiser of the task's library.

    Detection samples go to mmdet's ``DetLocalVisualizer``, segmentation samples to mmseg's
    ``SegLocalVisualizer``, classification samples to mmpretrain's ``UniversalVisualizer``
    (``visualize_cls``); each task gets its own instance with the class names (and palette) of its
    dataset. With ground truth and prediction both drawn, mmdet and mmseg put them side by side
    (ground truth left) and mmpretrain writes both labels. :meth:`draw_tasks` puts several tasks'
    pictures of one image next to each other, each under a caption.

    Args:
        dataset_metas: ``{task: dataset metainfo}`` (``classes``, optionally ``palette``).
        min_size: images whose short side is smaller are drawn enlarged to it (the samples'
            boxes and label maps scaled with them), so the libraries' labels stay legible.
        seg_alpha: opacity of the segmentation overlay.
        Other arguments: as mmengine's ``Visualizer`` (its backends receive ``add_datasample``).
    """

    def __init__(self, name: str = 'visualizer', image: Optional[np.ndarray] = None, vis_backends=None,
                 save_dir: Optional[str] = None, dataset_metas: Optional[Dict[str, dict]] = None,
                 min_size: int = 320, seg_alpha: float = 0.6):
        super().__init__(name=name, image=image, vis_backends=vis_backends, save_dir=save_dir)
        self.dataset_metas: Dict[str, dict] = dict(dataset_metas or {})
        self.min_size = min_size
        self.seg_alpha = seg_alpha
        self._drawers: Dict[Tuple[str, str], Visualizer] = {}

    def set_task_meta(self, task: str, meta: Optional[dict]) -> None:
        self.dataset_metas[task] = dict(meta or {})
        self._drawers = {k: v for k, v in self._drawers.items() if k[0] != task}

    def _drawer(self, task: str, kind: str) -> Visualizer:
        key = (task, kind)
        if key in self._drawers:
            return self._drawers[key]
        meta = dict(self.dataset_metas.get(task) or {})
        classes = meta.get('classes')
        palette = meta.get('palette')
        if classes is not None and (not palette or len(palette) < len(classes)):
            palette = default_palette(len(classes))
        name = f'{self.instance_name}.{task}'
        # built directly (not through the registry): they stay out of mmengine's global
        # Visualizer instances, so the runner's visualizer remains the current one
        if kind == 'detection':
            from mmdet.visualization import DetLocalVisualizer
            drawer = DetLocalVisualizer(name=name, line_width=2)
            drawer.dataset_meta = dict(meta, palette=palette) if classes is not None else meta
        elif kind == 'segmentation':
            from mmseg.visualization import SegLocalVisualizer
            if classes is None:
                raise ValueError(f'task {task!r}: drawing a label map needs the class names (dataset metainfo)')
            drawer = SegLocalVisualizer(name=name, alpha=self.seg_alpha)
            drawer.set_dataset_meta(classes=list(classes), palette=[list(c) for c in palette])
        else:
            from mmpretrain.visualization import UniversalVisualizer
            drawer = UniversalVisualizer(name=name)
            drawer.dataset_meta = meta
        self._drawers[key] = drawer
        return drawer

    def draw_task(self, task: str, image: np.ndarray, sample, draw_gt: bool = True, draw_pred: bool = True,
                  pred_score_thr: float = 0.3) -> np.ndarray:
        """One task's picture of ``image`` (RGB) and its data ``sample``, as its library draws it."""
        kind = sample_kind(sample)
        image = np.ascontiguousarray(image)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        h, w = image.shape[:2]
        factor = self.min_size / min(h, w) if self.min_size and min(h, w) < self.min_size else 1.0
        if factor != 1.0:
            image = mmcv.imresize(image, (round(w * factor), round(h * factor)))
        if kind == 'detection' or factor != 1.0:
            sample = rescale_sample(sample, factor, image.shape[:2])
        drawer = self._drawer(task, kind)
        if kind == 'classification':
            return drawer.visualize_cls(image, sample, draw_gt=draw_gt, draw_pred=draw_pred, name=task)
        if kind == 'segmentation':
            # SegLocalVisualizer hands its ground truth | prediction picture only to its backends
            # (get_image() is the last label map drawn): draw each half, joined as it joins them
            halves = []
            for gt, pred, key in ((True, False, 'gt_sem_seg'), (False, True, 'pred_sem_seg')):
                if (draw_gt if gt else draw_pred) and key in sample:
                    drawer.add_datasample(task, image, sample, draw_gt=gt, draw_pred=pred)
                    halves.append(drawer.get_image())
            return np.concatenate(halves, axis=1) if halves else image
        drawer.add_datasample(task, image, sample, draw_gt=draw_gt, draw_pred=draw_pred,
                              pred_score_thr=pred_score_thr)
        return drawer.get_image()

    def draw_tasks(self, image: np.ndarray, samples: Dict[str, object], draw_gt: bool = True,
                   draw_pred: bool = True, pred_score_thr: float = 0.3,
                   captions: Optional[Dict[str, str]] = None) -> np.ndarray:
        """Every task's picture of one image side by side, each under a caption (the task name)."""
        panels = []
        for task, sample in samples.items():
            drawn = self.draw_task(task, image, sample, draw_gt, draw_pred, pred_score_thr)
            panels.append(((captions or {}).get(task, task), drawn))
        return compose_panels(panels)

    def add_datasample(self, name: str, image: np.ndarray, data_sample=None, draw_gt: bool = True,
                       draw_pred: bool = True, show: bool = False, wait_time: float = 0,
                       out_file: Optional[str] = None, pred_score_thr: float = 0.3, step: int = 0,
                       task: Optional[str] = None) -> np.ndarray:
        """Draw one task's sample (``task``) or ``{task: sample}``; show, write or log it."""
        if isinstance(data_sample, dict):
            drawn = self.draw_tasks(image, data_sample, draw_gt, draw_pred, pred_score_thr)
        else:
            drawn = self.draw_task(task or name, image, data_sample, draw_gt, draw_pred, pred_score_thr)
        self.set_image(drawn)
        if show:
            self.show(drawn, win_name=name, wait_time=wait_time)
        if out_file is not None:
            mmcv.imwrite(mmcv.rgb2bgr(drawn), out_file)
        else:
            self.add_image(name, drawn, step)
        return drawn


def caption_strip(text: str, width: int, height: int = 28) -> np.ndarray:
    """A dark strip of ``width`` pixels with ``text`` in white (RGB)."""
    strip = np.full((height, width, 3), 40, np.uint8)
    scale = height / 40
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    while tw > width - 8 and scale > 0.3:  # shrink a caption wider than its panel
        scale *= 0.9
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(strip, text, (6, (height + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)
    return strip


def compose_panels(panels: Sequence[Tuple[str, np.ndarray]], gap: int = 6) -> np.ndarray:
    """Captioned pictures (RGB) side by side on a white background, tops aligned."""
    if not panels:
        raise ValueError('nothing to compose: no panel')
    cols = [np.concatenate([caption_strip(c, img.shape[1]), img], axis=0) for c, img in panels]
    height = max(c.shape[0] for c in cols)
    width = sum(c.shape[1] for c in cols) + gap * (len(cols) - 1)
    out = np.full((height, width, 3), 255, np.uint8)
    x = 0
    for c in cols:
        out[:c.shape[0], x:x + c.shape[1]] = c
        x += c.shape[1] + gap
    return out


def safe_name(text: str) -> str:
    """A file-name-safe version of ``text`` (for pictures named after images and tasks)."""
    return re.sub(r'[^A-Za-z0-9._-]+', '_', text).strip('_') or 'image'
