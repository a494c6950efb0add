#!/usr/bin/env python
"""Generate the embedded three-task demo dataset in the challenge's own formats.

Layout (the same as the challenge's ``track1_train_data``)::

    OUT/cls/{train,val}/*.jpg   OUT/cls/{train,val}.txt        "name label" per line
    OUT/dec/{train,val}/*.jpg   OUT/dec/{train,val}.json       COCO json
    OUT/seg/images/{train,val}/*.jpg  OUT/seg/label/{train,val}/*.png  uint8 ids, 255 = ignore

The content is synthetic but designed to be learnable from scratch in minutes and not trivial:
traffic-sign-like shapes of five classes on cluttered backgrounds with look-alike distractors
(detection), road-scene layouts whose classes overlap in colour (segmentation), and car
silhouettes whose six classes differ only in small details (roof line, wheel rims, spoiler) under
random body colour, mirroring and clutter (classification). Everything is a pure function of
``--seed``, so two runs write identical files.
"""
import argparse
import json
import os
import os.path as osp
import sys

import cv2
import numpy as np

DET_CLASSES = ('prohibitory', 'warning', 'mandatory', 'stop', 'priority')
SEG_CLASSES = ('road', 'sidewalk', 'building', 'vegetation', 'sky', 'car')
SEG_PALETTE = ((128, 64, 128), (244, 35, 232), (70, 70, 70), (107, 142, 35), (70, 130, 180),
               (0, 0, 142))
CLS_CLASSES = ('sedan', 'sedan_rims', 'hatch', 'hatch_rims', 'sedan_spoiler', 'hatch_spoiler')

DET_SIZE = 128           # square detection frames
SEG_SIZE = (128, 96)     # (w, h) road scenes
CLS_SIZE = 64            # square car crops
DEFAULT_COUNTS = dict(det=(600, 120), seg=(400, 80), cls=(1200, 300))


def _clutter(rng, h, w, n_shapes):
    """Random gradient background with lines and muted blobs (BGR uint8)."""
    c0, c1 = rng.randint(40, 200, 3), rng.randint(40, 200, 3)
    t = np.linspace(0, 1, h)[:, None, None]
    img = (c0 * (1 - t) + c1 * t) * np.ones((h, w, 3))
    img = img.astype(np.uint8)
    for _ in range(n_shapes):
        color = tuple(int(v) for v in rng.randint(30, 220, 3))
        kind = rng.randint(3)
        p = rng.randint(0, max(h, w), 4)
        if kind == 0:
            cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), color, int(rng.randint(1, 3)))
        elif kind == 1:
            cv2.rectangle(img, (int(p[0]), int(p[1])), (int(p[0] + rng.randint(4, 24)),
                                                      int(p[1] + rng.randint(4, 24))), color, -1)
        else:
            cv2.ellipse(img, (int(p[0]), int(p[1])), (int(rng.randint(3, 14)), int(rng.randint(3, 14))),
                        float(rng.randint(180)), 0, 360, color, -1)
    return img


def _noise(rng, img, sigma):
    out = img.astype(np.float32) + rng.normal(0, sigma, img.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def _jitter(rng, bgr, amount=25):
    return tuple(int(np.clip(c + rng.randint(-amount, amount + 1), 0, 255)) for c in bgr)


def _regular_polygon(cx, cy, r, n, rot):
    a = rot + np.arange(n) * 2 * np.pi / n
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1).round().astype(np.int32)


def draw_sign(rng, img, cls, cx, cy, r):
    """Draw a sign of class ``cls`` centred at (cx, cy) with radius r; return its tight box."""
    red, yellow, blue = _jitter(rng, (30, 30, 200)), _jitter(rng, (20, 200, 230)), _jitter(rng, (180, 80, 20))
    white, black = _jitter(rng, (235, 235, 235), 15), _jitter(rng, (25, 25, 25), 15)
    if cls == 0:  # prohibitory: white disc, red ring, black bar
        cv2.circle(img, (cx, cy), r, red, -1)
        cv2.circle(img, (cx, cy), max(1, int(r * 0.72)), white, -1)
        cv2.line(img, (cx - r // 2, cy), (cx + r // 2, cy), black, max(1, r // 6))
        pts = _regular_polygon(cx, cy, r, 32, 0)
    elif cls == 1:  # warning: upward triangle, red border, yellow inside
        pts = _regular_polygon(cx, cy, r, 3, -np.pi / 2)
        cv2.fillPoly(img, [pts], red)
        cv2.fillPoly(img, [_regular_polygon(cx, cy, max(1, int(r * 0.6)), 3, -np.pi / 2)], yellow)
    elif cls == 2:  # mandatory: blue disc with a white arrow
        cv2.circle(img, (cx, cy), r, blue, -1)
        cv2.arrowedLine(img, (cx, cy + r // 2), (cx, cy - r // 2), white, max(1, r // 5), tipLength=0.5)
        pts = _regular_polygon(cx, cy, r, 32, 0)
    elif cls == 3:  # stop: red octagon with a white band
        pts = _regular_polygon(cx, cy, r, 8, np.pi / 8)
        cv2.fillPoly(img, [pts], red)
        cv2.rectangle(img, (cx - r // 2, cy - max(1, r // 6)), (cx + r // 2, cy + max(1, r // 6)), white, -1)
    else:  # priority: yellow diamond, white border
        pts = _regular_polygon(cx, cy, r, 4, 0)
        cv2.fillPoly(img, [pts], white)
        cv2.fillPoly(img, [_regular_polygon(cx, cy, max(1, int(r * 0.7)), 4, 0)], yellow)
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0) + 1
    h, w = img.shape[:2]
    return [float(max(0, x0)), float(max(0, y0)), float(min(w, x1)), float(min(h, y1))]


def make_det_image(rng):
    img = _clutter(rng, DET_SIZE, DET_SIZE, rng.randint(6, 14))
    # look-alike distractors: sign colours in shapes that are not signs
    for _ in range(rng.randint(0, 3)):
        color = _jitter(rng, [(30, 30, 200), (20, 200, 230), (180, 80, 20)][rng.randint(3)])
        x, y = rng.randint(8, DET_SIZE - 8, 2)
        cv2.rectangle(img, (int(x), int(y)), (int(x + rng.randint(3, 10)), int(y + rng.randint(10, 26))), color, -1)
    boxes, labels = [], []
    for _ in range(rng.randint(1, 5)):
        r = int(rng.randint(7, 17))
        for _try in range(20):
            cx, cy = (int(v) for v in rng.randint(r, DET_SIZE - r, 2))
            if all(abs(cx - (b[0] + b[2]) / 2) > r + (b[2] - b[0]) / 2 + 1 or
                   abs(cy - (b[1] + b[3]) / 2) > r + (b[3] - b[1]) / 2 + 1 for b in boxes):
                break
        else:
            continue
        cls = int(rng.randint(len(DET_CLASSES)))
        boxes.append(draw_sign(rng, img, cls, cx, cy, r))
        labels.append(cls)
    return _noise(rng, img, 6), boxes, labels


def make_seg_image(rng):
    w, h = SEG_SIZE
    label = np.full((h, w), 3, np.uint8)  # vegetation / terrain below the horizon by default
    horizon = int(rng.randint(int(h * 0.3), int(h * 0.5)))
    label[:horizon] = 4  # sky
    # buildings rising from the horizon on both sides
    for side in (0, 1):
        x = 0 if side == 0 else w
        for _ in range(rng.randint(1, 4)):
            bw, bh = int(rng.randint(10, 40)), int(rng.randint(10, horizon + 6))
            x0 = x if side == 0 else x - bw
            label[max(0, horizon - bh):horizon + 4, max(0, x0):max(0, x0) + bw] = 2
            x = x + bw if side == 0 else x - bw
    # trees: blobs around the horizon
    for _ in range(rng.randint(0, 4)):
        cv2.circle(label, (int(rng.randint(w)), int(horizon + rng.randint(-8, 4))), int(rng.randint(4, 10)), 3, -1)
    # road trapezoid to a vanishing point, with sidewalks beside it
    vx = int(w / 2 + rng.randint(-20, 21))
    half = int(rng.randint(35, 60))
    walk = int(rng.randint(8, 18))
    vy = horizon + 2
    cv2.fillPoly(label, [np.array([[vx - 3, vy], [vx + 3, vy], [w // 2 + half + walk, h], [w // 2 - half - walk, h]],
                                  np.int32)], 1)
    cv2.fillPoly(label, [np.array([[vx - 2, vy], [vx + 2, vy], [w // 2 + half, h], [w // 2 - half, h]], np.int32)], 0)
    # cars on the road
    for _ in range(rng.randint(0, 3)):
        cy = int(rng.randint(vy + 8, h - 4))
        scale = (cy - vy) / (h - vy)
        cw, ch = max(4, int(30 * scale)), max(3, int(16 * scale))
        cx = int(vx + (rng.rand() - 0.5) * 2 * half * scale)
        cv2.rectangle(label, (cx - cw // 2, cy - ch), (cx + cw // 2, cy), 5, -1)
    # render: per-class colours with per-image jitter and texture; sidewalk and building share greys
    base = {0: (90, 90, 90), 1: (150, 150, 150), 2: (120, 120, 130), 3: (40, 120, 60), 4: (220, 170, 120),
            5: (40, 40, 160)}
    img = np.zeros((h, w, 3), np.uint8)
    for cid, color in base.items():
        img[label == cid] = _jitter(rng, color, 30)
    if rng.rand() < 0.5:  # lane markings on the road (still 'road')
        cv2.line(img, (vx, vy), (w // 2, h), (230, 230, 230), 1)
    tex = rng.normal(0, 14, (h, w, 1)) * (label[..., None] != 4)
    img = np.clip(img.astype(np.float32) + tex, 0, 255).astype(np.uint8)
    img = cv2.GaussianBlur(img, (3, 3), 0)
    label[-2:] = 255  # the bottom rows are 'ignore', as the ego-vehicle hood is in real frames
    return _noise(rng, img, 5), label


def make_cls_image(rng, cls):
    s = CLS_SIZE
    img = _clutter(rng, s, s, rng.randint(3, 8))
    hatch = cls in (2, 3, 5)
    rims = cls in (1, 3)
    spoiler = cls in (4, 5)
    body = _jitter(rng, [(40, 40, 200), (200, 60, 40), (60, 160, 60), (200, 200, 200), (30, 30, 30),
                         (40, 180, 220)][rng.randint(6)], 20)
    scale = rng.uniform(0.85, 1.1)
    x0 = int(rng.randint(2, 8))
    y0 = int(rng.randint(26, 36))
    L, H = int(48 * scale), int(10 * scale)
    cv2.rectangle(img, (x0, y0), (x0 + L, y0 + H), body, -1)
    # cabin: sedan = symmetric roof with a boot; hatch = roof runs to the rear
    top = y0 - int(9 * scale)
    if hatch:
        cabin = [[x0 + int(0.15 * L), y0], [x0 + int(0.3 * L), top], [x0 + int(0.95 * L), top], [x0 + L, y0]]
    else:
        cabin = [[x0 + int(0.2 * L), y0], [x0 + int(0.35 * L), top], [x0 + int(0.65 * L), top], [x0 + int(0.8 * L), y0]]
    cv2.fillPoly(img, [np.array(cabin, np.int32)], body)
    win = _jitter(rng, (200, 180, 150), 20)
    cv2.fillPoly(img, [np.array([[p[0] + (2 if i in (0, 1) else -2), p[1] + (2 if i in (1, 2) else -1)]
                                 for i, p in enumerate(cabin)], np.int32)], win)
    if spoiler:  # small wing above the rear deck
        cv2.rectangle(img, (x0 + L - 5, y0 - 4), (x0 + L, y0 - 2), _jitter(rng, (20, 20, 20), 10), -1)
        cv2.line(img, (x0 + L - 3, y0 - 2), (x0 + L - 3, y0), _jitter(rng, (20, 20, 20), 10), 1)
    r = max(3, int(5 * scale))
    for wx in (x0 + int(0.2 * L), x0 + int(0.8 * L)):
        cv2.circle(img, (wx, y0 + H), r, (20, 20, 20), -1)
        if rims:
            cv2.circle(img, (wx, y0 + H), max(1, r - 2), (210, 210, 210), 1)
    if rng.rand() < 0.5:  # cars face either way; every class is mirror-invariant
        img = np.ascontiguousarray(img[:, ::-1])
    return _noise(rng, img, 6)


def _write(path, img):
    os.makedirs(osp.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_QUALITY, 95] if path.endswith('.jpg') else []):
        raise OSError(f'could not write {path}')


def generate(out, seed=0, counts=None):
    counts = dict(DEFAULT_COUNTS, **(counts or {}))
    for split_i, split in enumerate(('train', 'val')):
        # one independent stream per (task, split): changing one count leaves the other sets unchanged
        rng = np.random.RandomState([seed, 0, split_i])
        images, anns = [], []
        for i in range(counts['det'][split_i]):
            img, boxes, labels = make_det_image(rng)
            name = f'{i:05d}.jpg'
            _write(osp.join(out, 'dec', split, name), img)
            images.append(dict(id=i + 1, file_name=name, width=DET_SIZE, height=DET_SIZE))
            for b, c in zip(boxes, labels):
                anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=c + 1, iscrowd=0,
                                 bbox=[b[0], b[1], b[2] - b[0], b[3] - b[1]], area=(b[2] - b[0]) * (b[3] - b[1])))
        coco = dict(images=images, annotations=anns,
                    categories=[dict(id=i + 1, name=n) for i, n in enumerate(DET_CLASSES)])
        with open(osp.join(out, 'dec', f'{split}.json'), 'w') as f:
            json.dump(coco, f)

        rng = np.random.RandomState([seed, 1, split_i])
        for i in range(counts['seg'][split_i]):
            img, label = make_seg_image(rng)
            _write(osp.join(out, 'seg', 'images', split, f'{i:05d}.jpg'), img)
            _write(osp.join(out, 'seg', 'label', split, f'{i:05d}.png'), label)

        rng = np.random.RandomState([seed, 2, split_i])
        lines = []
        for i in range(counts['cls'][split_i]):
            cls = i % len(CLS_CLASSES)
            name = f'{i:05d}.jpg'
            _write(osp.join(out, 'cls', split, name), make_cls_image(rng, cls))
            lines.append(f'{name} {cls}\n')
        with open(osp.join(out, 'cls', f'{split}.txt'), 'w') as f:
            f.writelines(lines)
    with open(osp.join(out, 'meta.json'), 'w') as f:
        json.dump(dict(seed=seed, counts=counts, det_classes=DET_CLASSES, seg_classes=SEG_CLASSES,
                       seg_palette=SEG_PALETTE, cls_classes=CLS_CLASSES), f, indent=1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default='data/demo', help='output root (default: data/demo)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--scale', type=float, default=1.0,
                   help='multiply every split size by this factor (tests use a small one)')
    p.add_argument('--force', action='store_true', help='regenerate even if OUT/meta.json exists')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if osp.exists(osp.join(args.out, 'meta.json')) and not args.force:
        print(f'demo data already present in {args.out} (use --force to regenerate)')
        return 0
    counts = {k: tuple(max(2, int(round(n * args.scale))) for n in v) for k, v in DEFAULT_COUNTS.items()}
    generate(args.out, args.seed, counts)
    print(f'demo data written to {args.out}: ' + ', '.join(f'{k} {v[0]} train / {v[1]} val' for k, v in counts.items()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
