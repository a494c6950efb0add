"""Layer-wise learning-rate decay on AllInOne's parameter layout (backbone.* / tasks.<name>.*), built
through mmengine's optim-wrapper builder with the per-task MultiTaskOptimWrapper."""
import copy

import pytest
import torch

VIT = dict(_scope_='mmpretrain', type='VisionTransformer', img_size=32, patch_size=8, out_type='featmap',
           arch=dict(embed_dims=16, num_layers=3, num_heads=2, feedforward_channels=32), final_norm=True)
SWIN = dict(_scope_='mmpretrain', type='SwinTransformer', img_size=64, window_size=4, out_indices=(3, ),
            arch=dict(embed_dims=8, depths=[1, 2, 1, 1], num_heads=[1, 1, 2, 2]))


def model_cfg(backbone, channels):
    head = dict(type='LinearClsHead', num_classes=3, in_channels=channels)
    task = dict(_scope_='mmpretrain', type='ImageClassifier', neck=dict(type='GlobalAveragePooling'), head=head)
    return dict(type='AllInOneModel', backbone=backbone, tasks=dict(a=task, b=copy.deepcopy(task)))


def build(backbone, channels, rate, optimizer=None, **paramwise):
    from mmengine.optim import build_optim_wrapper

    from projects.allinone.registry import MODELS
    torch.manual_seed(0)
    model = MODELS.build(model_cfg(backbone, channels))
    model.init_weights()
    wrapper = build_optim_wrapper(model, dict(
        type='MultiTaskOptimWrapper', constructor='AllInOneLayerDecayConstructor',
        optimizer=optimizer or dict(type='AdamW', lr=1e-3, weight_decay=0.05),
        paramwise_cfg=dict(layer_decay_rate=rate, **paramwise)))
    return model, wrapper


def lrs(model, wrapper):
    by_id = {id(p): g for g in wrapper.optimizer.param_groups for p in g['params']}
    return {n: by_id[id(p)] for n, p in model.named_parameters()}


def test_vit_lrs_by_depth_heads_at_base_and_custom_lr_mult(registered):
    model, wrapper = build(VIT, 16, 0.5, norm_decay_mult=0., custom_keys={'tasks.b': dict(lr_mult=2.)})
    groups = lrs(model, wrapper)
    assert len(groups) == sum(1 for _ in model.parameters())  # every parameter in exactly one group
    # 3 blocks -> 5 depths: stem 0, blocks 1..3, the rest 4; lr = 1e-3 * 0.5 ** (4 - depth)
    want = {'backbone.cls_token': 1e-3 / 16, 'backbone.pos_embed': 1e-3 / 16,
            'backbone.patch_embed.projection.weight': 1e-3 / 16,
            'backbone.layers.0.attn.qkv.weight': 1e-3 / 8, 'backbone.layers.1.ffn.layers.1.bias': 1e-3 / 4,
            'backbone.layers.2.ln2.weight': 1e-3 / 2, 'backbone.ln1.weight': 1e-3,
            'tasks.a.head.fc.weight': 1e-3, 'tasks.b.head.fc.weight': 2e-3}
    for name, lr in want.items():
        assert groups[name]['lr'] == pytest.approx(lr, rel=1e-12), name
    assert groups['backbone.layers.0.ln1.weight']['weight_decay'] == 0  # norm_decay_mult
    assert groups['backbone.layers.0.attn.qkv.weight']['weight_decay'] == pytest.approx(0.05)


def test_swin_lrs_by_depth(registered):
    model, wrapper = build(SWIN, 16, 0.8)
    groups = lrs(model, wrapper)
    # depths [1, 2, 1, 1] -> 7 depths; block j of stage s: 1 + sum(depths[:s]) + j; merging ends its stage
    depth = {'backbone.patch_embed.projection.weight': 0, 'backbone.stages.0.blocks.0.attn.w_msa.qkv.weight': 1,
             'backbone.stages.0.downsample.reduction.weight': 1, 'backbone.stages.1.blocks.1.norm2.weight': 3,
             'backbone.stages.1.downsample.norm.weight': 3, 'backbone.stages.3.blocks.0.ffn.layers.1.weight': 5,
             'backbone.norm3.weight': 6, 'tasks.a.head.fc.bias': 6}
    for name, d in depth.items():
        assert groups[name]['lr'] == pytest.approx(1e-3 * 0.8 ** (6 - d), rel=1e-12), name


def _batch(seed):
    from mmpretrain.structures import DataSample
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.randint(0, 255, (3, 32, 32), generator=g, dtype=torch.uint8) for _ in range(2)]
    return dict(inputs=imgs, data_samples=[DataSample().set_gt_label(i % 3) for i in range(2)])


def test_per_task_step_applies_each_parameters_lr(registered):
    """One MultiTaskOptimWrapper step with plain SGD: each parameter moves by its own lr times the
    aggregated gradient, i.e. exactly rate ** (top - depth) times what the same step moves it without decay."""
    sgd = dict(type='SGD', lr=10., momentum=0., weight_decay=0.)
    deltas = []
    for rate in (1.0, 0.5):
        model, wrapper = build(VIT, 16, rate, optimizer=sgd)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        model.train_step(dict(a=_batch(1), b=_batch(2)), wrapper)
        deltas.append({n: p.detach() - before[n] for n, p in model.named_parameters()})
    plain, decayed = deltas
    checked = 0
    for name in plain:
        depth = model.backbone.get_layer_depth(name, 'backbone.')[0]
        if plain[name].abs().max() > 1e-4:  # fp32 rounding of p_new - p_old is ~1e-8 here
            torch.testing.assert_close(decayed[name], plain[name] * 0.5 ** (4 - depth), rtol=1e-4, atol=1e-7)
            checked += 1
    assert checked > 20


def test_backbone_without_depths_and_missing_rate_are_named(registered):
    from mmengine.optim import build_optim_wrapper

    from projects.allinone.registry import MODELS
    resnet = dict(type='ResNet', depth=18, out_indices=(3, ))
    model = MODELS.build(model_cfg(resnet, 512))
    cfg = dict(type='MultiTaskOptimWrapper', constructor='AllInOneLayerDecayConstructor',
               optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05), paramwise_cfg=dict(layer_decay_rate=0.9))
    with pytest.raises(TypeError, match='get_layer_depth.*model.backbone is ResNet'):
        build_optim_wrapper(model, cfg)
    with pytest.raises(KeyError, match='layer_decay_rate'):
        build_optim_wrapper(model, dict(cfg, paramwise_cfg=dict(norm_decay_mult=0.)))
