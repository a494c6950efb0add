# Recipe (b), the top teams' kind of setup on the challenge data: a Swin-L pretrained on ImageNet-21k
# (mmpretrain zoo swin-large_3rdparty_in21k-384px, window 12) shared by DINO (4 scales: Swin stages
# 2-4 + one extra level), Mask2Former for segmentation (mmseg Mask2FormerHead: 100 queries, deformable
# pixel decoder, 9 decoder layers) and a margin-based fine-grained head (mmpretrain ArcFaceClsHead);
# TBGC; layer-wise lr decay 0.9 over the backbone; weight EMA (validation, checkpoints and tests use
# the averaged weights); the winning solution's augmentation branches (the train pipelines of
# _base_/datasets/track1.py, inherited); test-time augmentation with --tta (inherited).
#   tools/dist_train.sh configs/tbgc-dino-m2f-arcface_swin-l-in21k-pre_8gpu-52k_track1.py 8
# Weights: downloaded once into $TORCH_HOME/hub/checkpoints, or a local file with
#   --cfg-options model.backbone.init_cfg.checkpoint=/path/to/swin-large_3rdparty_in21k-384px.pth
# (docs/training_recipes.md; a timm Swin-L: tools/convert_weights.py).
_base_ = ['./allinone.py']

channels = [192, 384, 768, 1536]  # Swin-L's four stages (strides 4, 8, 16, 32)
pretrained = ('https://download.openmmlab.com/mmclassification/v0/swin-transformer/convert/'
              'swin-large_3rdparty_in21k-384px.pth')
model = dict(
    backbone=dict(
        _delete_=True, _scope_='mmpretrain', type='SwinTransformer', arch='large', img_size=896, window_size=12,
        drop_path_rate=0.3, out_indices=(0, 1, 2, 3), pad_small_map=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone')),
    tasks=dict(
        det=dict(
            backbone=dict(type='SharedFeatures', in_indices=[1, 2, 3]),  # strides 8/16/32
            neck=dict(_delete_=True, type='ChannelMapper', in_channels=channels[1:], kernel_size=1,
                      out_channels=256, act_cfg=None, norm_cfg=dict(type='GN', num_groups=32), num_outs=4)),
        seg=dict(
            auxiliary_head=None,
            decode_head=dict(
                _delete_=True, type='Mask2FormerHead', in_channels=channels, strides=[4, 8, 16, 32],
                feat_channels=256, out_channels=256, num_classes=19, num_queries=100,
                num_transformer_feat_level=3, align_corners=False,
                pixel_decoder=dict(
                    type='mmdet.MSDeformAttnPixelDecoder', num_outs=3, norm_cfg=dict(type='GN', num_groups=32),
                    act_cfg=dict(type='ReLU'),
                    encoder=dict(num_layers=6, layer_cfg=dict(
                        self_attn_cfg=dict(embed_dims=256, num_heads=8, num_levels=3, num_points=4, im2col_step=64,
                                           dropout=0.0, batch_first=True, norm_cfg=None, init_cfg=None),
                        ffn_cfg=dict(embed_dims=256, feedforward_channels=1024, num_fcs=2, ffn_drop=0.0,
                                     act_cfg=dict(type='ReLU', inplace=True))), init_cfg=None),
                    positional_encoding=dict(num_feats=128, normalize=True), init_cfg=None),
                enforce_decoder_input_project=False,
                positional_encoding=dict(num_feats=128, normalize=True),
                transformer_decoder=dict(
                    return_intermediate=True, num_layers=9, init_cfg=None, layer_cfg=dict(
                        self_attn_cfg=dict(embed_dims=256, num_heads=8, attn_drop=0.0, proj_drop=0.0,
                                           dropout_layer=None, batch_first=True),
                        cross_attn_cfg=dict(embed_dims=256, num_heads=8, attn_drop=0.0, proj_drop=0.0,
                                            dropout_layer=None, batch_first=True),
                        ffn_cfg=dict(embed_dims=256, feedforward_channels=2048, num_fcs=2, ffn_drop=0.0,
                                     act_cfg=dict(type='ReLU', inplace=True), dropout_layer=None,
                                     add_identity=True))),
                loss_cls=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=False, loss_weight=2.0, reduction='mean',
                              class_weight=[1.0] * 19 + [0.1]),
                loss_mask=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=True, reduction='mean', loss_weight=5.0),
                loss_dice=dict(type='mmdet.DiceLoss', use_sigmoid=True, activate=True, reduction='mean',
                               naive_dice=True, eps=1.0, loss_weight=5.0),
                train_cfg=dict(
                    num_points=12544, oversample_ratio=3.0, importance_sample_ratio=0.75,
                    assigner=dict(type='mmdet.HungarianAssigner', match_costs=[
                        dict(type='mmdet.ClassificationCost', weight=2.0),
                        dict(type='mmdet.CrossEntropyLossCost', weight=5.0, use_sigmoid=True),
                        dict(type='mmdet.DiceCost', weight=5.0, pred_act=True, eps=1.0)]),
                    sampler=dict(type='mmdet.MaskPseudoSampler')))),
        # cosine logits with an additive angular margin on the true class (ArcFace), 196 car models
        cls=dict(head=dict(_delete_=True, type='ArcFaceClsHead', num_classes=196, in_channels=channels[-1],
                           scale=30.0, margins=0.3, num_subcenters=1,
                           loss=dict(type='CrossEntropyLoss', loss_weight=1.0))),
    ))

# TBGC (inherited), AdamW with layer-wise lr decay: the heads at 2e-4, Swin-L's 26 depths each x0.9 further
# down (the stem at 2e-4 x 0.9^25 = 1.4e-5); no weight decay on norms, biases and position tables
optim_wrapper = dict(
    constructor='AllInOneLayerDecayConstructor',
    optimizer=dict(lr=2e-4, weight_decay=0.05),
    paramwise_cfg=dict(_delete_=True, layer_decay_rate=0.9, norm_decay_mult=0.0, bias_decay_mult=0.0,
                       custom_keys={'absolute_pos_embed': dict(decay_mult=0.0),
                                    'relative_position_bias_table': dict(decay_mult=0.0),
                                    'query_embed': dict(decay_mult=0.0), 'query_feat': dict(decay_mult=0.0),
                                    'level_embed': dict(decay_mult=0.0)}))

# weight EMA (mmdet's momentum with warm-up); every tensor averaged once (TiedExpMomentumEMA)
custom_hooks = _base_.custom_hooks + [
    dict(type='EMAHook', ema_type='TiedExpMomentumEMA', momentum=2e-4, update_buffers=True, priority=49)]
