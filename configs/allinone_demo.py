# AllInOne on the embedded demo data: trains on 2 CPU cores in minutes, from scratch.
#   python tools/make_demo_data.py && python tools/train.py configs/allinone_demo.py
_base_ = ['./_base_/default_runtime.py', './_base_/datasets/demo.py']

norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    type='AllInOneModel',
    # the shared backbone: a half-width ResNet-18 (no pretrained weights can be fetched here)
    backbone=dict(type='ResNet', depth=18, base_channels=32, num_stages=4, out_indices=(0, 1, 2, 3),
                  norm_cfg=norm_cfg, norm_eval=False, style='pytorch'),
    tasks=dict(
        # detection: a real mmdet RTMDet (neck + dense head + assigner), minus its backbone
        det=dict(
            _scope_='mmdet', type='RTMDet',
            data_preprocessor=dict(type='DetDataPreprocessor', mean=[103.53, 116.28, 123.675],
                                   std=[57.375, 57.12, 58.395], bgr_to_rgb=False, pad_size_divisor=32),
            neck=dict(type='FPN', in_channels=[32, 64, 128, 256], out_channels=64, start_level=1, num_outs=3),
            bbox_head=dict(
                type='RTMDetSepBNHead', num_classes=5, in_channels=64, stacked_convs=2, feat_channels=64,
                anchor_generator=dict(type='MlvlPointGenerator', offset=0, strides=[8, 16, 32]),
                bbox_coder=dict(type='DistancePointBBoxCoder'),
                loss_cls=dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0, loss_weight=1.0),
                loss_bbox=dict(type='GIoULoss', loss_weight=2.0),
                with_objectness=False, exp_on_reg=False, share_conv=True, pred_kernel_size=1,
                norm_cfg=norm_cfg, act_cfg=dict(type='SiLU', inplace=True)),
            train_cfg=dict(assigner=dict(type='DynamicSoftLabelAssigner', topk=13),
                           allowed_border=-1, pos_weight=-1, debug=False),
            test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                          nms=dict(type='nms', iou_threshold=0.6), max_per_img=100)),
        # segmentation: a real mmseg EncoderDecoder with an FPN decode head
        seg=dict(
            _scope_='mmseg', type='EncoderDecoder',
            data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                                   std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                                   seg_pad_val=255, size_divisor=32),
            decode_head=dict(type='FPNHead', in_channels=[32, 64, 128, 256], in_index=[0, 1, 2, 3],
                             feature_strides=[4, 8, 16, 32], channels=64, dropout_ratio=0.1, num_classes=6,
                             norm_cfg=norm_cfg, align_corners=False,
                             loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
            train_cfg=dict(), test_cfg=dict(mode='whole')),
        # fine-grained classification: a real mmpretrain ImageClassifier
        cls=dict(
            _scope_='mmpretrain', type='ImageClassifier',
            data_preprocessor=dict(type='ClsDataPreprocessor', num_classes=6, mean=[123.675, 116.28, 103.53],
                                   std=[58.395, 57.12, 57.375], to_rgb=True),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=6, in_channels=256,
                      loss=dict(type='CrossEntropyLoss', loss_weight=1.0))),
    ))

max_iters = 1000
train_cfg = dict(type='MultiTaskTrainLoop', max_iters=max_iters, val_interval=500)
val_cfg = dict(type='MultiTaskValLoop')
# `tools/test.py --submit OUT.json` writes the challenge file; detection goes under 'dec' there
test_cfg = dict(type='MultiTaskTestLoop', submission=dict(keys=dict(det='dec')))

optim_wrapper = dict(
    type='MultiTaskOptimWrapper',
    aggregator=dict(type='SumAggregator'),
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=100, end=max_iters, eta_min=2e-5),
]
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=500))

# Test-time augmentation (`tools/test.py ... --tta`): every view of TestTimeAug (scales x flips) is
# predicted, then merged by the task library's TTA model (boxes: mapped back + NMS; segmentation:
# mean of the softmax maps; classification: mean of the scores)
tta_model = dict(type='MultiTaskTTAModel', tta=dict(
    det=dict(type='DetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.6), max_per_img=100)),
    seg=dict(_scope_='mmseg', type='SegTTAModel'),
    cls=dict(_scope_='mmpretrain', type='AverageClsScoreTTA')))
tta_flips = [dict(type='RandomFlip', prob=0.), dict(type='RandomFlip', prob=1., direction='horizontal')]
tta_pipeline = dict(
    det=[dict(type='LoadImageFromFile'),
         dict(type='TestTimeAug', transforms=[
             [dict(type='Resize', scale=(128, 128), keep_ratio=True),
              dict(type='Resize', scale=(160, 160), keep_ratio=True)],
             tta_flips,
             [dict(type='LoadAnnotations', with_bbox=True)],
             [dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                                    'scale_factor', 'flip', 'flip_direction'))]])],
    seg=[dict(type='LoadImageFromFile'),
         dict(type='TestTimeAug', transforms=[
             [dict(type='Resize', scale_factor=1.0, keep_ratio=True),
              dict(type='Resize', scale_factor=1.25, keep_ratio=True)],
             tta_flips, [dict(type='LoadAnnotations')], [dict(type='PackSegInputs')]])],
    cls=[dict(type='LoadImageFromFile'),
         dict(type='TestTimeAug', transforms=[tta_flips, [dict(type='PackInputs')]])])
