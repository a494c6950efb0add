"""tools/convert_weights.py: randomly initialised timm ViT / Swin (no download) -> the project's backbone,
loaded through the config path (init_cfg Pretrained), the same features on the same input."""
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO

timm = pytest.importorskip('timm')


def _allinone(backbone, channels):
    return dict(type='AllInOneModel', backbone=backbone, tasks=dict(cls=dict(
        _scope_='mmpretrain', type='ImageClassifier', neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=3, in_channels=channels))))


def _randomise(model):
    """timm zero-initialises some tensors (biases, layer scale): give every one a random value, so a
    tensor converted to the wrong place cannot pass unnoticed."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 else 0.0))


def _convert(tmp_path, model):
    src, dst = str(tmp_path / 'timm.pth'), str(tmp_path / 'converted.pth')
    torch.save(model.state_dict(), src)
    from tools.convert_weights import main
    assert main([src, dst]) == dst
    return dst


def _load(backbone_cfg, channels, ckpt):
    from projects.allinone.registry import MODELS
    cfg = _allinone(dict(backbone_cfg, init_cfg=dict(type='Pretrained', checkpoint=ckpt, prefix='backbone')), channels)
    model = MODELS.build(cfg)
    model.init_weights()
    return model.eval()


@pytest.mark.parametrize('variant', ['token', 'avg_layerscale'])
def test_timm_vit_converts_to_the_same_features(registered, tmp_path, variant):
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    kw = dict(global_pool='avg', init_values=0.1, fc_norm=True) if variant == 'avg_layerscale' else {}
    ref = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=4, num_classes=7, **kw)
    _randomise(ref)
    ckpt = _convert(tmp_path, ref.eval())
    out_type = 'avg_featmap' if variant == 'avg_layerscale' else 'raw'
    backbone = dict(_scope_='mmpretrain', type='VisionTransformer', img_size=32, patch_size=8,
                    arch=dict(embed_dims=48, num_layers=3, num_heads=4, feedforward_channels=192),
                    out_type=out_type, final_norm=not kw, layer_scale_init_value=0.1 if kw else 0.)
    model = _load(backbone, 48, ckpt)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.extract_feat(x)[-1]
        if variant == 'avg_layerscale':
            theirs = ref.forward_head(ref.forward_features(x), pre_logits=True)  # avg of tokens, then fc_norm
        else:
            theirs = ref.forward_features(x)  # all tokens (cls first), after the final norm
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_timm_swin_converts_to_the_same_features(registered, tmp_path):
    """Every stage's output, so the patch merging's channel order is checked where it acts."""
    from timm.models.swin_transformer import SwinTransformer
    torch.manual_seed(0)
    ref = SwinTransformer(img_size=128, patch_size=4, window_size=4, embed_dim=16, depths=(2, 2, 2, 2),
                          num_heads=(1, 2, 4, 8), num_classes=5)
    _randomise(ref)
    ckpt = _convert(tmp_path, ref.eval())
    backbone = dict(_scope_='mmpretrain', type='SwinTransformer', img_size=128, window_size=4,
                    arch=dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8]), out_indices=(0, 1, 2, 3))
    model = _load(backbone, 128, ckpt)
    # the output norms of stages 0-2 have no timm counterpart (they stay at LayerNorm's initialisation,
    # weight 1, bias 0): timm's stage outputs get the same plain layer norm below
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.extract_feat(x)
        h = ref.patch_embed(x)
        theirs = []
        for stage in ref.layers:
            h = stage(h)
            theirs.append(h)
        theirs = [F.layer_norm(t, t.shape[-1:]) for t in theirs[:-1]] + [ref.norm(theirs[-1])]
    for i, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b.permute(0, 3, 1, 2), rtol=1e-4, atol=1e-4, msg=f'stage {i}')


def test_unfold_order_matches_mmpretrain_patch_merging():
    """The permutation alone: timm's 2x2 concatenation vs nn.Unfold on a map whose values name their place."""
    from tools.convert_weights import unfold_order
    c = 3
    x = torch.arange(c * 4 * 4, dtype=torch.float).reshape(1, c, 4, 4)
    unfold = torch.nn.Unfold(2, stride=2)(x).transpose(1, 2)[0]            # (L, 4C), mmpretrain's order
    nhwc = x.permute(0, 2, 3, 1)
    x0, x1 = nhwc[:, 0::2, 0::2], nhwc[:, 1::2, 0::2]
    x2, x3 = nhwc[:, 0::2, 1::2], nhwc[:, 1::2, 1::2]
    timm_feat = torch.cat([x0, x1, x2, x3], -1).reshape(-1, 4 * c)         # the official / timm order
    assert torch.equal(timm_feat[:, unfold_order(c)], unfold)


def test_unknown_keys_stop_the_conversion(tmp_path):
    from tools.convert_weights import convert
    sd = {'blocks.0.attn.qkv.weight': torch.zeros(6, 2), 'blocks.0.attn.q_norm.weight': torch.zeros(1),
          'reg_token': torch.zeros(1, 4, 2), 'head.weight': torch.zeros(3, 2)}
    with pytest.raises(ValueError, match=r"2 key\(s\) this converter does not know.*q_norm.*reg_token"):
        convert(sd, 'vit')


def test_cli_writes_a_checkpoint_and_says_how_to_use_it(tmp_path):
    from timm.models.vision_transformer import VisionTransformer
    src = str(tmp_path / 'm.pth')
    torch.save({'model': VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2).state_dict()},
               src)
    proc = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'convert_weights.py'), src, str(tmp_path / 'o.pth')],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert 'timm vit, 18 tensors converted, 2 dropped (head.weight, head.bias)' in proc.stdout
    assert f"model.backbone.init_cfg.checkpoint={tmp_path / 'o.pth'}" in proc.stdout
    ck = torch.load(str(tmp_path / 'o.pth'), weights_only=True)
    assert 'backbone.layers.0.ffn.layers.0.0.weight' in ck['state_dict'] and ck['meta']['arch'] == 'vit'
