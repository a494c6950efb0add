# The embedded demo data (python tools/make_demo_data.py), in the challenge's layout.
data_root = 'data/demo/'
det_classes = ('prohibitory', 'warning', 'mandatory', 'stop', 'priority')
seg_classes = ('road', 'sidewalk', 'building', 'vegetation', 'sky', 'car')
seg_palette = [(128, 64, 128), (244, 35, 232), (70, 70, 70), (107, 142, 35), (70, 130, 180), (0, 0, 142)]
cls_classes = ('sedan', 'sedan_rims', 'hatch', 'hatch_rims', 'sedan_spoiler', 'hatch_spoiler')

# ---- detection (mmdet, COCO json) ----
# Each task routes every sample through exactly one branch (MultiBranchAugment): mosaic composition,
# photometric changes and scale/crop jitter never stack on one sample. The mosaic branch's three extra
# frames are loaded by the dataset through the transforms before MultiBranchAugment (flip included);
# AugBranchHook switches mosaic off for the last tenth of training and logs each branch's share.
det_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='MultiBranchAugment', names=['mosaic', 'photometric', 'scale_crop'], probs=[0.3, 0.35, 0.35],
         schedule=[dict(at_frac=0.9, probs=dict(mosaic=0.0))], branches=[
             # four 128 px frames around a random centre, then the 128 x 128 window at the middle of
             # the 256 x 256 mosaic, mildly rescaled
             [dict(type='Mosaic', img_scale=(128, 128), center_ratio_range=(0.75, 1.25), pad_val=114.0),
              dict(type='RandomAffine', max_rotate_degree=0.0, max_translate_ratio=0.0, max_shear_degree=0.0,
                   scaling_ratio_range=(0.8, 1.25), border=(-64, -64))],
             [dict(type='AlbuAugment', transforms=[dict(type='RandomBrightnessContrast', p=0.5),
                                                   dict(type='HueSaturationValue', p=0.3)])],
             [dict(type='RandomResize', scale=(128, 128), ratio_range=(0.8, 1.25), keep_ratio=True),
              dict(type='RandomCrop', crop_size=(128, 128), allow_negative_crop=True)],
         ]),
    # signs cut to slivers at a mosaic or crop border are no longer signs
    dict(type='FilterAnnotations', min_gt_bbox_wh=(2, 2), keep_empty=False),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                                          'flip_direction', 'aug_branch')),
]
det_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),  # also records scale_factor for rescaling
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
det_dataset = dict(_scope_='mmdet', type='ChallengeCocoDataset', data_root=data_root + 'dec/',
                   metainfo=dict(classes=det_classes), filter_cfg=dict(filter_empty_gt=False))

# ---- segmentation (mmseg, label PNGs) ----
seg_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='MultiBranchAugment', names=['mosaic', 'photometric', 'scale_crop'], probs=[0.3, 0.35, 0.35],
         schedule=[dict(at_frac=0.9, probs=dict(mosaic=0.0))], branches=[
             # four scenes around a random centre of a 192 x 256 mosaic, then a 96 x 128 crop of it
             [dict(type='RandomMosaic', prob=1.0, img_scale=(96, 128), center_ratio_range=(0.75, 1.25)),
              dict(type='RandomCrop', crop_size=(96, 128), cat_max_ratio=0.75)],
             [dict(type='PhotoMetricDistortion', brightness_delta=16, contrast_range=(0.8, 1.2),
                   saturation_range=(0.8, 1.2), hue_delta=8)],
             [dict(type='RandomResize', scale=(128, 96), ratio_range=(0.8, 1.5), keep_ratio=True),
              dict(type='RandomCrop', crop_size=(96, 128), cat_max_ratio=0.75)],
         ]),
    dict(type='PackSegInputs', meta_keys=('img_path', 'seg_map_path', 'ori_shape', 'img_shape', 'pad_shape',
                                          'scale_factor', 'flip', 'flip_direction', 'reduce_zero_label',
                                          'aug_branch')),
]
seg_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
seg_dataset = dict(_scope_='mmseg', type='ChallengeSegDataset', data_root=data_root + 'seg/',
                   metainfo=dict(classes=seg_classes, palette=seg_palette),
                   img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=False)

# ---- classification (mmpretrain, "name label" lists) ----
cls_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='MultiBranchAugment', names=['photometric', 'erasing'], probs=[0.5, 0.5], branches=[
        [dict(type='AlbuAugment', transforms=[dict(type='RandomBrightnessContrast', p=0.5),
                                              dict(type='HueSaturationValue', p=0.5)])],
        # small patches only: the classes differ in details a large patch could erase
        [dict(type='RandomErasing', erase_prob=0.5, mode='rand', min_area_ratio=0.01, max_area_ratio=0.05)],
    ]),
    dict(type='PackInputs', meta_keys=('sample_idx', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                                       'flip_direction', 'aug_branch')),
]
cls_test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
cls_dataset = dict(_scope_='mmpretrain', type='ChallengeClsDataset', data_root=data_root + 'cls/',
                   metainfo=dict(classes=cls_classes), with_label=True)


def _loader(dataset, batch_size, shuffle):
    return dict(batch_size=batch_size, num_workers=0,
                sampler=dict(type='DefaultSampler', shuffle=shuffle), dataset=dataset)


train_dataloader = dict(
    det=_loader(dict(**det_dataset, ann_file='train.json', data_prefix=dict(img='train/'),
                     pipeline=det_train_pipeline), 8, True),
    seg=_loader(dict(**seg_dataset, data_prefix=dict(img_path='images/train', seg_map_path='label/train'),
                     pipeline=seg_train_pipeline), 8, True),
    cls=_loader(dict(**cls_dataset, ann_file='train.txt', data_prefix='train', pipeline=cls_train_pipeline),
                16, True),
)
val_dataloader = dict(
    det=_loader(dict(**det_dataset, ann_file='val.json', data_prefix=dict(img='val/'), test_mode=True,
                     pipeline=det_test_pipeline), 16, False),
    seg=_loader(dict(**seg_dataset, data_prefix=dict(img_path='images/val', seg_map_path='label/val'),
                     test_mode=True, pipeline=seg_test_pipeline), 16, False),
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
