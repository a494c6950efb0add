# The challenge's training data in its own layout (see README "Real challenge data"):
#   data/track1_train_data/{cls,dec,seg}/...
data_root = 'data/track1_train_data/'
backend_args = None

# 45 TT100K sign classes used by the challenge (category names as in the challenge's dec/*.json)
det_classes = ('i2', 'i4', 'i5', 'il100', 'il60', 'il80', 'io', 'ip', 'p10', 'p11', 'p12', 'p19', 'p23',
               'p26', 'p27', 'p3', 'p5', 'p6', 'pg', 'ph4', 'ph4.5', 'ph5', 'pl100', 'pl120', 'pl20', 'pl30',
               'pl40', 'pl5', 'pl50', 'pl60', 'pl70', 'pl80', 'pm20', 'pm30', 'pm55', 'pn', 'pne', 'po', 'pr40',
               'w13', 'w32', 'w55', 'w57', 'w59', 'wo')
seg_classes = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign',
               'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle',
               'bicycle')
seg_palette = [[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153], [153, 153, 153],
               [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152], [70, 130, 180], [220, 20, 60],
               [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100], [0, 80, 100], [0, 0, 230], [119, 11, 32]]
cls_classes = tuple(f'car_{i:03d}' for i in range(196))  # Stanford Cars ids 0..195

det_scale = (896, 896)
seg_scale = (1280, 720)
seg_crop = (896, 896)
cls_size = 448

# detection: flip, then exactly one of a hard branch (scale jitter + crop + blur/noise) or an easy one
det_train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='MultiBranchAugment', names=['jitter', 'plain'], probs=[0.8, 0.2], branches=[
        [dict(type='RandomResize', scale=det_scale, ratio_range=(0.5, 1.5), keep_ratio=True),
         dict(type='RandomCrop', crop_size=det_scale, allow_negative_crop=True),
         dict(type='AlbuAugment', transforms=[
             dict(type='RandomBrightnessContrast', p=0.5),
             dict(type='OneOf', transforms=[dict(type='GaussNoise'), dict(type='Blur', blur_limit=3)], p=0.3)])],
        [dict(type='Resize', scale=det_scale, keep_ratio=True)],
    ]),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='PackDetInputs'),
]
det_test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=det_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
# segmentation: multi-scale crop + photometric, or the same geometry with weather effects
seg_train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=seg_scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=seg_crop, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='MultiBranchAugment', names=['photometric', 'weather'], probs=[0.6, 0.4], branches=[
        [dict(type='PhotoMetricDistortion')],
        [dict(type='AlbuAugment', transforms=[dict(type='OneOf', transforms=[
            dict(type='RandomFog'), dict(type='RandomRain'), dict(type='RandomSunFlare')], p=1.0)])],
    ]),
    dict(type='PackSegInputs'),
]
seg_test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=seg_scale, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
# classification: AutoAugment and random erasing never on the same image
cls_train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='RandomResizedCrop', scale=cls_size),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='MultiBranchAugment', names=['autoaugment', 'erasing'], probs=[0.5, 0.5], branches=[
        [dict(type='AutoAugment', policies='imagenet')],
        [dict(type='RandomErasing', erase_prob=0.5, mode='rand', min_area_ratio=0.02, max_area_ratio=1 / 3)],
    ]),
    dict(type='PackInputs'),
]
cls_test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='ResizeEdge', scale=cls_size, edge='short'),
    dict(type='CenterCrop', crop_size=cls_size),
    dict(type='PackInputs'),
]

det_dataset = dict(_scope_='mmdet', type='ChallengeCocoDataset', data_root=data_root + 'dec/',
                   metainfo=dict(classes=det_classes), filter_cfg=dict(filter_empty_gt=False))
seg_dataset = dict(_scope_='mmseg', type='ChallengeSegDataset', data_root=data_root + 'seg/',
                   metainfo=dict(classes=seg_classes, palette=seg_palette),
                   img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=False)
cls_dataset = dict(_scope_='mmpretrain', type='ChallengeClsDataset', data_root=data_root + 'cls/',
                   metainfo=dict(classes=cls_classes), with_label=True)


def _loader(dataset, batch_size, shuffle, workers=4):
    return dict(batch_size=batch_size, num_workers=workers, persistent_workers=True,
                sampler=dict(type='DefaultSampler', shuffle=shuffle), dataset=dataset)


# per-GPU batch sizes; x8 GPUs = the challenge baseline's seg 16 / cls 128 / det 16 per step
# (README "Train for the challenge" has the table for 1, 2, 4 and 8 GPUs). Class-aware sampling of
# the cars, as the baseline: train_dataloader = dict(cls=dict(sampler=dict(_delete_=True,
#     type='ClassAwareSampler', num_sample_class=1)))   (mmdet's sampler; equal draws per class)
train_dataloader = dict(
    det=_loader(dict(**det_dataset, ann_file='train.json', data_prefix=dict(img='train/'),
                     pipeline=det_train_pipeline), 2, True),
    seg=_loader(dict(**seg_dataset, data_prefix=dict(img_path='images/train', seg_map_path='label/train'),
                     pipeline=seg_train_pipeline), 2, True),
    cls=_loader(dict(**cls_dataset, ann_file='train.txt', data_prefix='train', pipeline=cls_train_pipeline),
                16, True),
)
# the batch the learning rate is set for (the baseline's 8 GPUs): `tools/train.py --auto-scale-lr`
# scales the lr by the actual batch (GPUs x per-GPU batch) over this one, as mmdet does
auto_scale_lr = dict(enable=False, base_batch_size=dict(det=16, seg=16, cls=128))
val_dataloader = dict(
    det=_loader(dict(**det_dataset, ann_file='val.json', data_prefix=dict(img='val/'), test_mode=True,
                     pipeline=det_test_pipeline), 2, False),
    seg=_loader(dict(**seg_dataset, data_prefix=dict(img_path='images/val', seg_map_path='label/val'),
                     test_mode=True, pipeline=seg_test_pipeline), 2, False),
    cls=_loader(dict(**cls_dataset, ann_file='val.txt', data_prefix='val', test_mode=True,
                     pipeline=cls_test_pipeline), 32, False),
)
test_dataloader = val_dataloader
val_evaluator = dict(
    # mmdet's CocoMetric / mmseg's IoUMetric with category ids by class name and a score per class
    det=dict(_scope_='mmdet', type='ChallengeCocoMetric', ann_file=data_root + 'dec/val.json', metric='bbox'),
    seg=dict(_scope_='mmseg', type='ChallengeIoUMetric', iou_metrics=['mIoU']),
    cls=dict(_scope_='mmpretrain', type='Accuracy', topk=(1, )),
)
test_evaluator = val_evaluator
