"""A small tree in the challenge's layout, with the quirks of the real files, for tests.

    ROOT/track1_train_data/                      the config's data_root (configs/_base_/datasets/track1.py)
      cls/train/*.jpg  cls/val/*.jpg  cls/train.txt  cls/val.txt     "00001.jpg 17" per line
      dec/train/*.jpg  dec/val/*.jpg  dec/train.json dec/val.json    COCO json
      seg/images/{train,val}/*.jpg   seg/label/{train,val}/*.png     uint8 ids 0..18, 255 = ignore
    ROOT/track1_test_data/                       the unlabeled test split
      cls/test/*.jpg   seg/test/*.jpg   dec/test/*.jpg   dec/test.json (COCO ``images`` only)

The class names are those of ``track1.py`` (read from the file, so the tree follows the config).
What real files do and a synthetic set easily forgets, each present here on purpose:

* detection categories with non-contiguous ids (neither ``1..45`` nor sorted), listed in another
  order than the config's ``det_classes``; optionally categories the config does not have
  (``det_extra_categories``), with boxes;
* image ids that are large and not contiguous;
* detection images without any box (train and val), boxes 2-4 pixels wide;
* grayscale JPEGs (cars, and one detection and one segmentation frame per split);
* label PNGs with 255 (ignore) regions;
* images of different sizes (64-160 px, so everything stays fast).

Everything is a pure function of the arguments (``seed``): two calls write identical files.
"""
import json
import os
import os.path as osp
import runpy
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TRACK1 = osp.join(REPO, 'configs', '_base_', 'datasets', 'track1.py')

#: images per (task, split); 'test' is the unlabeled split
DEFAULT_COUNTS = dict(det=dict(train=10, val=5, test=3), seg=dict(train=6, val=3, test=2),
                      cls=dict(train=16, val=8, test=4))
#: TT100K sign names that are not among the challenge's 45 (for the class-name checks)
TT100K_NOT_IN_CONFIG = ('pl10', 'pm10', 'w21')


@dataclass
class ChallengeTree:
    """Where :func:`make_challenge_tree` wrote what, and what it wrote."""
    root: str                 # holds track1_train_data/ and track1_test_data/
    train_root: str           # ROOT/track1_train_data/ (trailing slash): a config's data_root
    test_root: str            # ROOT/track1_test_data/
    det_classes: Tuple[str, ...]
    seg_classes: Tuple[str, ...]
    cls_classes: Tuple[str, ...]
    det_categories: List[dict]                  # the detection files' categories, in file order
    counts: Dict[str, Dict[str, int]]           # images per task and split
    det_boxes: Dict[str, List[dict]] = field(default_factory=dict)  # split -> annotations written
    cls_labels: Dict[str, List[int]] = field(default_factory=dict)  # split -> label of each line

    def det_id(self, name: str) -> int:
        """The file's category id of a class name."""
        return next(c['id'] for c in self.det_categories if c['name'] == name)


def track1_classes(path: str = TRACK1) -> Tuple[tuple, tuple, tuple]:
    """``(det_classes, seg_classes, cls_classes)`` as the dataset config defines them."""
    ns = runpy.run_path(path)
    return tuple(ns['det_classes']), tuple(ns['seg_classes']), tuple(ns['cls_classes'])


def _background(rng, w: int, h: int) -> np.ndarray:
    c0, c1 = rng.randint(30, 220, 3), rng.randint(30, 220, 3)
    t = np.linspace(0, 1, h)[:, None, None]
    img = c0 * (1 - t) + c1 * t + rng.normal(0, 8, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _save_jpg(path: str, rgb: np.ndarray, gray: bool = False) -> None:
    img = Image.fromarray(rgb)
    if gray:
        img = img.convert('L')  # a single-channel JPEG on disk, as some real files are
    img.save(path, quality=90)


def _det_categories(rng, classes: Sequence[str], extra: Sequence[str]) -> List[dict]:
    names = list(classes) + list(extra)
    order = rng.permutation(len(names))
    if list(order) == sorted(order):  # never the config's order
        order = order[::-1]
    ids = rng.choice(np.arange(1, 10 * len(names)), len(names), replace=False)  # neither 1..N nor sorted
    return [dict(id=int(ids[k]), name=names[i], supercategory='sign') for k, i in enumerate(order)]


def _write_det_split(rng, out: str, split: str, n: int, categories: List[dict], first_img_id: int,
                     first_ann_id: int, labeled: bool) -> Tuple[list, list]:
    os.makedirs(osp.join(out, split), exist_ok=True)
    images, anns = [], []
    img_id, ann_id = first_img_id, first_ann_id
    # categories with boxes: a handful, so that train and val share them, plus every extra category
    known = [c for c in categories if c['name'] not in TT100K_NOT_IN_CONFIG][:6]
    extra = [c for c in categories if c['name'] in TT100K_NOT_IN_CONFIG]
    for i in range(n):
        w, h = int(rng.randint(96, 161)), int(rng.randint(64, 129))
        img = _background(rng, w, h)
        draw_img = Image.fromarray(img)
        draw = ImageDraw.Draw(draw_img)
        # image 1 of a split has no box; image 2 has a box a few pixels wide
        n_boxes = 0 if i == 1 else int(rng.randint(1, 4))
        boxes = []
        for k in range(n_boxes):
            if i == 2 and k == 0:
                bw, bh = int(rng.randint(2, 5)), int(rng.randint(3, 7))
            else:
                bw, bh = int(rng.randint(8, 33)), int(rng.randint(8, 33))
            x, y = int(rng.randint(0, w - bw)), int(rng.randint(0, h - bh))
            cat = extra[(i + k) % len(extra)] if extra and k == n_boxes - 1 and i % 2 == 0 \
                else known[(i + k) % len(known)]
            color = tuple(int(v) for v in rng.randint(0, 256, 3))
            draw.rectangle([x, y, x + bw - 1, y + bh - 1], fill=color)
            boxes.append((x, y, bw, bh, cat['id']))
        img_name = f'{split}_{i:05d}.jpg'
        _save_jpg(osp.join(out, split, img_name), np.asarray(draw_img), gray=(i == 3))
        images.append(dict(id=img_id, file_name=img_name, width=w, height=h))
        for x, y, bw, bh, cat_id in boxes:
            anns.append(dict(id=ann_id, image_id=img_id, category_id=cat_id, bbox=[float(x), float(y), float(bw),
                                                                                    float(bh)],
                             area=float(bw * bh), iscrowd=0))
            ann_id += int(rng.randint(1, 5))
        img_id += int(rng.randint(7, 50))  # large, gappy image ids
    content = dict(images=images)
    if labeled:
        content.update(annotations=anns, categories=categories)
    with open(osp.join(out, f'{split}.json'), 'w') as f:
        json.dump(content, f)
    return images, anns


def _seg_pair(rng, w: int, h: int, palette) -> Tuple[np.ndarray, np.ndarray]:
    """A road-scene-like label map (sky, buildings, road, a few objects, an ignore region) + image."""
    label = np.full((h, w), 10, np.uint8)                        # sky
    horizon = int(h * rng.uniform(0.3, 0.5))
    label[horizon:, :] = 2                                       # building
    road = int(h * rng.uniform(0.6, 0.75))
    label[road:, :] = 0                                          # road
    label[road:, : w // 6] = 1                                   # sidewalk
    for cls in rng.choice([5, 8, 11, 13, 14, 18], 3, replace=False):
        x0, y0 = int(rng.randint(0, w - 12)), int(rng.randint(horizon, h - 8))
        label[y0:y0 + int(rng.randint(4, 16)), x0:x0 + int(rng.randint(4, 24))] = cls
    label[h - int(rng.randint(3, 9)):, w - int(rng.randint(10, 30)):] = 255  # ego-vehicle style ignore
    colors = np.array(list(palette) + [[0, 0, 0]] * (256 - len(palette)), np.float64)
    img = colors[label] + rng.normal(0, 10, (h, w, 3))
    return label, np.clip(img, 0, 255).astype(np.uint8)


def make_challenge_tree(root: str, seed: int = 0, counts: Optional[Dict[str, Dict[str, int]]] = None,
                        det_extra_categories: Sequence[str] = ()) -> ChallengeTree:
    """Write the tree under ``root`` and describe it.

    Args:
        root: the folder to write ``track1_train_data/`` and ``track1_test_data/`` into.
        seed: every random choice (sizes, boxes, labels, category ids) follows from it.
        counts: ``{task: {split: n}}`` overriding :data:`DEFAULT_COUNTS` entries.
        det_extra_categories: category names the config does not list, added to the detection
            files' categories (at a random place of the list) with boxes in train and val, e.g.
            :data:`TT100K_NOT_IN_CONFIG`.
    """
    unknown = [c for c in det_extra_categories if c not in TT100K_NOT_IN_CONFIG]
    if unknown:
        raise ValueError(f'det_extra_categories: {unknown} are not among {TT100K_NOT_IN_CONFIG}')
    rng = np.random.RandomState(seed)
    det_classes, seg_classes, cls_classes = track1_classes()
    palette = runpy.run_path(TRACK1)['seg_palette']
    n = {t: dict(DEFAULT_COUNTS[t], **((counts or {}).get(t, {}))) for t in DEFAULT_COUNTS}
    train = osp.join(root, 'track1_train_data')
    test = osp.join(root, 'track1_test_data')
    tree = ChallengeTree(root=root, train_root=train + '/', test_root=test + '/', det_classes=det_classes,
                         seg_classes=seg_classes, cls_classes=cls_classes,
                         det_categories=_det_categories(rng, det_classes, det_extra_categories), counts=n)

    # detection: train / val labeled, test images-only (dec/test.json holds no categories)
    img_id, ann_id = 9000001, 501
    for split in ('train', 'val'):
        images, anns = _write_det_split(rng, osp.join(train, 'dec'), split, n['det'][split], tree.det_categories,
                                        img_id, ann_id, labeled=True)
        tree.det_boxes[split] = anns
        img_id, ann_id = images[-1]['id'] + 1000, (anns[-1]['id'] if anns else ann_id) + 1000
    _write_det_split(rng, osp.join(test, 'dec'), 'test', n['det']['test'], tree.det_categories, img_id, 0,
                     labeled=False)

    # segmentation: 16:9 frames (as BDD100K's 1280x720), labels 0..18 with 255 regions
    for split in ('train', 'val', 'test'):
        labeled = split != 'test'
        img_dir = osp.join(train, 'seg', 'images', split) if labeled else osp.join(test, 'seg', 'test')
        os.makedirs(img_dir, exist_ok=True)
        if labeled:
            os.makedirs(osp.join(train, 'seg', 'label', split), exist_ok=True)
        for i in range(n['seg'][split]):
            w = int(rng.choice([96, 128, 160]))
            label, img = _seg_pair(rng, w, w * 9 // 16, palette)
            _save_jpg(osp.join(img_dir, f'{split}_{i:05d}.jpg'), img, gray=(i == 1))
            if labeled:
                Image.fromarray(label).save(osp.join(train, 'seg', 'label', split, f'{split}_{i:05d}.png'))

    # classification: a few of the 196 classes, unevenly represented (as a long-tailed set is): each
    # once, then 8:4:2:1
    used = [0, 17, 101, 195]
    tail = [0] * 8 + [17] * 4 + [101] * 2 + [195]
    for split in ('train', 'val', 'test'):
        labeled = split != 'test'
        img_dir = osp.join(train, 'cls', split) if labeled else osp.join(test, 'cls', 'test')
        os.makedirs(img_dir, exist_ok=True)
        lines, labels = [], []
        for i in range(n['cls'][split]):
            if split == 'train':
                label = used[i] if i < len(used) else tail[(i - len(used)) % len(tail)]
            else:
                label = used[i % len(used)]
            side = int(rng.randint(64, 129))
            img = _background(rng, side, int(side * rng.uniform(0.6, 1.0)))
            img[img.shape[0] // 3: 2 * img.shape[0] // 3, :, :] = (label * 37 % 256, label * 91 % 256, 128)
            name = f'{i + 1:05d}.jpg'
            _save_jpg(osp.join(img_dir, name), img, gray=(i % 3 == 2))
            lines.append(f'{name} {label}')
            labels.append(label)
        if labeled:
            with open(osp.join(train, 'cls', f'{split}.txt'), 'w') as f:
                f.write('\n'.join(lines) + '\n')
            tree.cls_labels[split] = labels
    return tree
