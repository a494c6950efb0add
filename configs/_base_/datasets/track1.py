# The challenge's training data in its own layout (see docs/challenge.md, "Real challenge data"):
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

# Multi-branch augmentation as the winning solution (TBGC) ran it: every sample takes exactly one
# branch, so composition (Mosaic, MixUp) never stacks with heavy geometric or weather jitter. A mixing
# branch's extra images are loaded by the dataset through the transforms before MultiBranchAugment;
# branches that do not mix load nothing more. AugBranchHook (default runtime) applies the schedules
# (mosaic off for the last tenth of training) and logs the share of samples per branch.
# one noise or blur op (p 0.6), as the winners' albumentations block; GaussNoise std up to sqrt(50) grey levels
noise_or_blur = dict(type='AlbuAugment', transforms=[dict(type='OneOf', p=0.6, transforms=[
    dict(type='GaussNoise', std_range=(0.0, 0.028), p=1.0),
    dict(type='Blur', blur_limit=3, p=1.0),
    dict(type='Emboss', alpha=(0.2, 0.5), strength=(0.2, 0.7), p=0.5),
    dict(type='GaussianBlur', blur_limit=(3, 5), p=1.0),
    dict(type='MultiplicativeNoise', multiplier=(0.8, 1.2), elementwise=True, p=1.0)])])

# detection: hard (p 0.8): Mosaic, RandomAffine scale 0.2-1.5, MixUp, HSV, flip, noise/blur;
# easy (p 0.2): multi-scale resize or resize + crop + resize, flip, mild rotation, noise/blur.
# The winners' sizes were for a 1280 px test scale; here they are scaled by det_scale / 1280.
_det_f = det_scale[0] / 1280
det_short_sides = [(int(s * _det_f), int(s * _det_f)) for s in range(800, 1281, 32)]  # 0.625-1.0 of the test scale
det_train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='MultiBranchAugment', names=['hard', 'easy'], probs=[0.8, 0.2],
         schedule=[dict(at_frac=0.9, probs=dict(hard=0.0))], branches=[
             [dict(type='Mosaic', img_scale=det_scale, pad_val=114.0),
              dict(type='RandomAffine', max_rotate_degree=0.0, max_translate_ratio=0.0, max_shear_degree=0.0,
                   scaling_ratio_range=(0.2, 1.5), border=(-det_scale[0] // 2, -det_scale[1] // 2)),
              dict(type='MixUp', img_scale=det_scale, ratio_range=(0.5, 1.5), pad_val=114.0),
              dict(type='YOLOXHSVRandomAug'),
              dict(type='Resize', scale=det_scale, keep_ratio=True),
              dict(type='RandomFlip', prob=0.5),
              noise_or_blur],
             [dict(type='RandomChoice', transforms=[
                 [dict(type='RandomChoiceResize', scales=det_short_sides, keep_ratio=True)],
                 [dict(type='RandomChoiceResize', keep_ratio=True,
                       scales=[(int(s * _det_f), int(s * _det_f)) for s in (832, 928, 1024, 1120, 1280)]),
                  dict(type='RandomCrop', crop_type='absolute_range', crop_size=(int(640 * _det_f), int(1280 * _det_f)),
                       allow_negative_crop=True),
                  dict(type='RandomChoiceResize', scales=det_short_sides, keep_ratio=True)]]),
              dict(type='RandomFlip', prob=0.5),
              dict(type='Rotate', prob=0.6, max_mag=10.0, img_border_value=114),
              noise_or_blur],
         ]),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                                          'flip_direction', 'aug_branch')),
]
det_test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=det_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
# segmentation: mosaic (p 0.4): RandomMosaic of 4 frames at their own scale, resize x1-2 of the
# test scale, crop, flip, photometric, noise/blur; multi-scale (p 0.6): resize x0.5-2, crop, weather
# (p 0.1), flip, photometric, grayscale (p 0.1), rotation (p 0.2, up to 15 degrees), noise/blur.
seg_weather = dict(type='AlbuAugment', transforms=[dict(type='OneOf', p=0.1, transforms=[
    dict(type='RandomFog', fog_coef_range=(0.3, 0.6), p=1.0), dict(type='RandomRain', p=1.0),
    dict(type='Spatter', p=1.0), dict(type='RandomSunFlare', src_radius=200, p=1.0),
    dict(type='RandomBrightnessContrast', brightness_limit=(-0.6, 0.6), contrast_limit=0.0, p=1.0)])])
seg_train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations'),
    dict(type='MultiBranchAugment', names=['mosaic', 'multiscale'], probs=[0.4, 0.6],
         schedule=[dict(at_frac=0.9, probs=dict(mosaic=0.0))], branches=[
             [dict(type='RandomMosaic', prob=1.0, img_scale=seg_scale[::-1], center_ratio_range=(1.0, 1.0),
                   pad_val=0, seg_pad_val=255),
              dict(type='RandomResize', scale=seg_scale, ratio_range=(1.0, 2.0), keep_ratio=True),
              dict(type='RandomCrop', crop_size=seg_crop, cat_max_ratio=0.75),
              dict(type='RandomFlip', prob=0.5),
              dict(type='PhotoMetricDistortion'),
              noise_or_blur],
             [dict(type='RandomResize', scale=seg_scale, ratio_range=(0.5, 2.0), keep_ratio=True),
              dict(type='RandomCrop', crop_size=seg_crop, cat_max_ratio=0.75),
              seg_weather,
              dict(type='RandomFlip', prob=0.5),
              dict(type='PhotoMetricDistortion'),
              # grayscale, 3 channels, uint8 (mmseg's RGB2Gray returns float64, which the noise ops refuse)
              dict(type='AlbuAugment', transforms=[dict(type='ToGray', p=0.1)]),
              dict(type='RandomRotate', prob=0.2, degree=15),
              noise_or_blur],
         ]),
    dict(type='PackSegInputs', meta_keys=('img_path', 'seg_map_path', 'ori_shape', 'img_shape', 'pad_shape',
                                          'scale_factor', 'flip', 'flip_direction', 'reduce_zero_label',
                                          'aug_branch')),
]
seg_test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=seg_scale, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
# classification (the challenge baseline's branches): AutoAugment and random erasing never on the same image
cls_train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='RandomResizedCrop', scale=cls_size),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='MultiBranchAugment', names=['autoaugment', 'erasing'], probs=[0.5, 0.5], branches=[
        [dict(type='AutoAugment', policies='imagenet')],
        [dict(type='RandomErasing', erase_prob=0.5, mode='rand', min_area_ratio=0.02, max_area_ratio=1 / 3)],
    ]),
    dict(type='PackInputs', meta_keys=('sample_idx', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                                       'flip_direction', 'aug_branch')),
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
# (docs/challenge.md, "Train for the challenge", has the table for 1, 2, 4 and 8 GPUs). Class-aware sampling of
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
