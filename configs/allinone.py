# The competition setup (CVPR 2023 Foundation Model Challenge, Track 1): a ViT-Base backbone shared
# by DINO detection (45 TT100K classes), SETR-PUP segmentation (BDD100K, 19 classes) and a Stanford
# Cars head (196 classes), trained with TBGC:  python tools/train.py configs/allinone.py
# (batch sizes are per GPU for 8 GPUs: tools/dist_train.sh configs/allinone.py 8; the per-task DDP
# wrapper is set in _base_/default_runtime.py)
_base_ = ['./_base_/default_runtime.py', './_base_/datasets/track1.py']

embed = 768
# The backbone starts from ImageNet-21k pretraining (fine-tuned on ImageNet-1k at 384 px), mmpretrain's
# model zoo `vit-base-p16_in21k-pre_3rdparty_in1k-384px`; its position embeddings are resized to 896 px
# at load. Downloaded once into $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints).
# A local file:  --cfg-options model.backbone.init_cfg.checkpoint=/path/to/file.pth
# From scratch:  --cfg-options model.backbone.init_cfg=None        (docs/training_recipes.md)
pretrained = ('https://download.openmmlab.com/mmclassification/v0/vit/finetune/'
              'vit-base-p16_in21k-pre-3rdparty_ft-64xb64_in1k-384_20210928-98e8652b.pth')
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='AllInOneModel',
    backbone=dict(_scope_='mmpretrain', type='VisionTransformer', arch='base', img_size=896, patch_size=16,
                  out_indices=(3, 5, 7, 11), out_type='featmap', drop_path_rate=0.5, final_norm=False,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone')),
    tasks=dict(
        det=dict(
            _scope_='mmdet', type='DINO', num_queries=900, with_box_refine=True, as_two_stage=True,
            data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                                   std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=32),
            # the single-stride ViT maps -> strides 8/16/32/64, then DINO's 256-channel input
            neck=[dict(_scope_='mmseg', type='MultiLevelNeck', in_channels=[embed] * 4, out_channels=embed,
                       scales=[2, 1, 0.5, 0.25]),
                  dict(type='ChannelMapper', in_channels=[embed] * 4, kernel_size=1, out_channels=256,
                       act_cfg=None, norm_cfg=dict(type='GN', num_groups=32), num_outs=4)],
            encoder=dict(num_layers=6, layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=256, num_levels=4, dropout=0.0),
                ffn_cfg=dict(embed_dims=256, feedforward_channels=2048, ffn_drop=0.0))),
            decoder=dict(num_layers=6, return_intermediate=True, layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=256, num_heads=8, dropout=0.0),
                cross_attn_cfg=dict(embed_dims=256, num_levels=4, dropout=0.0),
                ffn_cfg=dict(embed_dims=256, feedforward_channels=2048, ffn_drop=0.0)), post_norm_cfg=None),
            positional_encoding=dict(num_feats=128, normalize=True, offset=0.0, temperature=20),
            bbox_head=dict(type='DINOHead', num_classes=45, sync_cls_avg_factor=True,
                           loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
                           loss_bbox=dict(type='L1Loss', loss_weight=5.0),
                           loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
            dn_cfg=dict(label_noise_scale=0.5, box_noise_scale=1.0,
                        group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=100)),
            train_cfg=dict(assigner=dict(type='HungarianAssigner', match_costs=[
                dict(type='FocalLossCost', weight=2.0), dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                dict(type='IoUCost', iou_mode='giou', weight=2.0)])),
            test_cfg=dict(max_per_img=300)),
        seg=dict(
            _scope_='mmseg', type='EncoderDecoder',
            data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                                   std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0, seg_pad_val=255,
                                   size=(896, 896)),
            decode_head=dict(type='SETRUPHead', in_channels=embed, channels=256, in_index=3, num_classes=19,
                             dropout_ratio=0, norm_cfg=norm_cfg, num_convs=4, up_scale=2, kernel_size=3,
                             align_corners=False,
                             loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
            auxiliary_head=dict(type='SETRUPHead', in_channels=embed, channels=256, in_index=1, num_classes=19,
                                dropout_ratio=0, norm_cfg=norm_cfg, num_convs=2, up_scale=4, kernel_size=3,
                                align_corners=False,
                                loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
            train_cfg=dict(), test_cfg=dict(mode='whole')),
        cls=dict(
            _scope_='mmpretrain', type='ImageClassifier',
            data_preprocessor=dict(type='ClsDataPreprocessor', num_classes=196, mean=[123.675, 116.28, 103.53],
                                   std=[58.395, 57.12, 57.375], to_rgb=True),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=196, in_channels=embed,
                      loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'))),
    ))

max_iters = 52500  # 120 epochs of the 7,000 segmentation images at 16 per step
train_cfg = dict(type='MultiTaskTrainLoop', max_iters=max_iters, val_interval=5000)
val_cfg = dict(type='MultiTaskValLoop', leaderboard=dict(boards=dict(A=['det', 'seg', 'cls'], B=['det', 'cls'])))
test_cfg = dict(type='MultiTaskTestLoop', leaderboard=dict(boards=dict(A=['det', 'seg', 'cls'], B=['det', 'cls'])),
                submission=dict(keys=dict(det='dec')))

# TBGC: each task's backbone gradient clipped to 0.1 on its own (the winning solution's setting)
optim_wrapper = dict(
    type='MultiTaskOptimWrapper',
    aggregator=dict(type='TBGCAggregator', max_norm=0.1),
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=200),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=200, end=max_iters, eta_min=1e-6),
]
default_hooks = dict(checkpoint=dict(interval=5000, max_keep_ckpts=3, save_best='leaderboard/A', rule='greater'))
env_cfg = dict(dist_cfg=dict(backend='nccl'))

# Test-time augmentation (tools/test.py ... --tta): every view (scales x horizontal flips) is predicted,
# then merged by the task library's TTA model: detection boxes mapped back to the image + NMS,
# segmentation the mean of the softmax maps, classification the mean of the scores.
tta_model = dict(type='MultiTaskTTAModel', tta=dict(
    det=dict(type='DetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.6), max_per_img=300)),
    seg=dict(_scope_='mmseg', type='SegTTAModel'),
    cls=dict(_scope_='mmpretrain', type='AverageClsScoreTTA')))
tta_flips = [dict(type='RandomFlip', prob=0.), dict(type='RandomFlip', prob=1., direction='horizontal')]
tta_pipeline = dict(
    det=[dict(type='LoadImageFromFile', backend_args=_base_.backend_args),
         dict(type='TestTimeAug', transforms=[
             [dict(type='Resize', scale=(int(_base_.det_scale[0] * r), int(_base_.det_scale[1] * r)), keep_ratio=True)
              for r in (1.0, 1.25)],
             tta_flips,
             [dict(type='LoadAnnotations', with_bbox=True)],
             [dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                                    'scale_factor', 'flip', 'flip_direction'))]])],
    seg=[dict(type='LoadImageFromFile', backend_args=_base_.backend_args),
         dict(type='TestTimeAug', transforms=[
             [dict(type='Resize', scale=(int(_base_.seg_scale[0] * r), int(_base_.seg_scale[1] * r)), keep_ratio=True)
              for r in (0.75, 1.0, 1.25)],
             tta_flips, [dict(type='LoadAnnotations')], [dict(type='PackSegInputs')]])],
    cls=[dict(type='LoadImageFromFile', backend_args=_base_.backend_args),
         dict(type='ResizeEdge', scale=_base_.cls_size, edge='short'),
         dict(type='CenterCrop', crop_size=_base_.cls_size),
         dict(type='TestTimeAug', transforms=[tta_flips, [dict(type='PackInputs')]])])
