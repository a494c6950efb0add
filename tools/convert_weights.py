#!/usr/bin/env python
"""Convert a timm ViT or Swin checkpoint to the keys of the project's backbones.

    python tools/convert_weights.py SRC DST [--arch auto|vit|swin] [--prefix backbone]

SRC: a timm state dict (``.pth`` / ``.bin`` / ``.safetensors``; also wrapped in ``model`` /
``state_dict``), e.g. from ``timm.create_model(name, pretrained=True).state_dict()`` or a Hugging Face
``model.safetensors``. DST: an mmpretrain-style checkpoint ``{'state_dict': {'backbone.<key>': ...}}``
for mmpretrain's ``VisionTransformer`` / ``SwinTransformer``, which a config loads with
``init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone')`` (the load report then lists
what matched). The classifier head is dropped; any other key the converter does not know stops it
(nothing is dropped silently). Swin's patch-merging layers take their 2x2 neighbours in another order
in timm (concatenation) than in mmpretrain (``nn.Unfold``): their input channels are permuted.
"""
import argparse
import os
import os.path as osp
import re
import sys
from collections import OrderedDict
from typing import Dict, List, Tuple

import torch

StateDict = Dict[str, torch.Tensor]

# key patterns of timm -> mmpretrain, matched in order on the whole key
VIT_RULES = [
    (r'cls_token', 'cls_token'),
    (r'pos_embed', 'pos_embed'),
    (r'patch_embed\.proj\.(weight|bias)', r'patch_embed.projection.\1'),
    (r'norm_pre\.(weight|bias)', r'pre_norm.\1'),
    (r'blocks\.(\d+)\.norm1\.(weight|bias)', r'layers.\1.ln1.\2'),
    (r'blocks\.(\d+)\.attn\.qkv\.(weight|bias)', r'layers.\1.attn.qkv.\2'),
    (r'blocks\.(\d+)\.attn\.proj\.(weight|bias)', r'layers.\1.attn.proj.\2'),
    (r'blocks\.(\d+)\.ls1\.gamma', r'layers.\1.attn.gamma1.weight'),
    (r'blocks\.(\d+)\.norm2\.(weight|bias)', r'layers.\1.ln2.\2'),
    (r'blocks\.(\d+)\.mlp\.fc1\.(weight|bias)', r'layers.\1.ffn.layers.0.0.\2'),
    (r'blocks\.(\d+)\.mlp\.fc2\.(weight|bias)', r'layers.\1.ffn.layers.1.\2'),
    (r'blocks\.(\d+)\.ls2\.gamma', r'layers.\1.ffn.gamma2.weight'),
    (r'norm\.(weight|bias)', r'ln1.\1'),        # final norm (global_pool='token')
    (r'fc_norm\.(weight|bias)', r'ln2.\1'),     # final norm of global_pool='avg' (out_type='avg_featmap')
]
SWIN_RULES = [
    (r'patch_embed\.proj\.(weight|bias)', r'patch_embed.projection.\1'),
    (r'patch_embed\.norm\.(weight|bias)', r'patch_embed.norm.\1'),
    (r'absolute_pos_embed', 'absolute_pos_embed'),
    (r'layers\.(\d+)\.blocks\.(\d+)\.norm1\.(weight|bias)', r'stages.\1.blocks.\2.norm1.\3'),
    (r'layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)', r'stages.\1.blocks.\2.attn.w_msa.qkv.\3'),
    (r'layers\.(\d+)\.blocks\.(\d+)\.attn\.proj\.(weight|bias)', r'stages.\1.blocks.\2.attn.w_msa.proj.\3'),
    (r'layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table',
     r'stages.\1.blocks.\2.attn.w_msa.relative_position_bias_table'),
    (r'layers\.(\d+)\.blocks\.(\d+)\.norm2\.(weight|bias)', r'stages.\1.blocks.\2.norm2.\3'),
    (r'layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc1\.(weight|bias)', r'stages.\1.blocks.\2.ffn.layers.0.0.\3'),
    (r'layers\.(\d+)\.blocks\.(\d+)\.mlp\.fc2\.(weight|bias)', r'stages.\1.blocks.\2.ffn.layers.1.\3'),
]
# dropped on purpose: the classifier, and buffers both models compute from their settings
DROPPED = [r'head(\..*)?', r'head_drop\..*', r'.*relative_position_index', r'.*attn_mask']


def load_timm_state_dict(path: str) -> StateDict:
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        sd = load_file(path)
    else:
        sd = torch.load(path, map_location='cpu', weights_only=True)
    for wrapper in ('state_dict', 'model', 'module'):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not sd:
        raise ValueError(f'{path}: no state dict found (a dict of tensors, or one under "model" / "state_dict")')
    return OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in sd.items())


def detect_arch(sd: StateDict) -> str:
    if any(re.match(r'layers\.\d+\.blocks\.\d+\.attn\.qkv\.weight', k) for k in sd):
        return 'swin'
    if any(re.match(r'blocks\.\d+\.attn\.qkv\.weight', k) for k in sd):
        return 'vit'
    raise ValueError('neither a timm ViT (blocks.N.attn.qkv) nor a timm Swin (layers.N.blocks.M.attn.qkv); '
                     f'first keys: {list(sd)[:8]}')


def _apply(rules, key: str):
    for pattern, repl in rules:
        if re.fullmatch(pattern, key):
            return re.sub(f'^{pattern}$', repl, key)
    return None


def unfold_order(channels: int) -> torch.Tensor:
    """Index into timm's merged features for each of mmpretrain's (``nn.Unfold``: channel-major).

    timm concatenates the 2x2 neighbours as (row 0, col 0), (1, 0), (0, 1), (1, 1), each with all C
    channels: feature ``(2 * col + row) * C + c``. ``nn.Unfold(2, stride=2)`` gives ``c * 4 + 2 * row + col``.
    """
    c = channels
    order = torch.empty(4 * c, dtype=torch.long)
    for m in range(4 * c):
        ch, row, col = m // 4, (m % 4) // 2, m % 2
        order[m] = (2 * col + row) * c + ch
    return order


def convert(sd: StateDict, arch: str) -> Tuple[StateDict, List[str], List[str]]:
    """timm keys -> mmpretrain keys. Returns ``(converted, dropped, notes)``; unknown keys raise."""
    out, dropped, unknown, notes = OrderedDict(), [], [], []
    rules = VIT_RULES if arch == 'vit' else SWIN_RULES
    # timm >= 0.9 puts a Swin stage's patch merging at the start of the next stage; older timm (and
    # the official Swin) at the end of its own, as mmpretrain does
    merging_first = arch == 'swin' and not any(k.startswith('layers.0.downsample.') for k in sd)
    for key, value in sd.items():
        if any(re.fullmatch(p, key) for p in DROPPED):
            dropped.append(key)
            continue
        m = re.fullmatch(r'layers\.(\d+)\.downsample\.(norm\.weight|norm\.bias|reduction\.weight)', key)
        if arch == 'swin' and m:
            stage = int(m.group(1)) - (1 if merging_first else 0)
            order = unfold_order(value.shape[-1] // 4)
            value = value[:, order] if m.group(2) == 'reduction.weight' else value[order]
            out[f'stages.{stage}.downsample.{m.group(2)}'] = value.contiguous()
            continue
        new = _apply(rules, key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if arch == 'swin' and 'norm.weight' in sd:  # the last stage's output norm
        last = max(int(k.split('.')[1]) for k in out if k.startswith('stages.'))
        for p in ('weight', 'bias'):
            out[f'norm{last}.{p}'] = sd[f'norm.{p}']
        unknown = [k for k in unknown if k not in ('norm.weight', 'norm.bias')]
        notes.append(f"timm's final norm -> norm{last} (out_indices=({last}, ) takes it; the norms of other "
                     'output stages stay at their initialisation)')
    if unknown:
        raise ValueError(f'{len(unknown)} key(s) this converter does not know for a timm {arch} (not converted, '
                         f'nothing written): {unknown[:12]}')
    if arch == 'vit':
        notes += _vit_notes(sd)
    return out, dropped, notes


def _vit_notes(sd: StateDict) -> List[str]:
    """What the mmpretrain ViT config needs to match these weights."""
    dims = sd['patch_embed.proj.weight'].shape[0]
    patch = sd['patch_embed.proj.weight'].shape[-1]
    depth = 1 + max(int(k.split('.')[1]) for k in sd if k.startswith('blocks.'))
    ffn = sd['blocks.0.mlp.fc1.weight'].shape[0]
    notes = [f'ViT: embed_dims={dims}, num_layers={depth}, feedforward_channels={ffn}, patch_size={patch} '
             '(num_heads is not in the weights: take it from the model card)']
    if 'pos_embed' in sd:
        n = sd['pos_embed'].shape[1]
        extra = n - int(round((n - ('cls_token' in sd)) ** 0.5)) ** 2
        notes.append(f'pos_embed: {n} tokens ({extra} extra); mmpretrain resizes it to img_size at load')
    if 'fc_norm.weight' in sd:
        notes.append("global-average-pooled model: its final norm is ln2: set out_type='avg_featmap', final_norm=False")
    if 'norm_pre.weight' in sd:
        notes.append('norm before the blocks: set pre_norm=True')
    return notes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Convert timm ViT / Swin weights to the AllInOne backbone keys '
                                     '(mmpretrain VisionTransformer / SwinTransformer)')
    parser.add_argument('src', help='timm checkpoint (.pth, .bin or .safetensors)')
    parser.add_argument('dst', help='output checkpoint (.pth)')
    parser.add_argument('--arch', choices=['auto', 'vit', 'swin'], default='auto')
    parser.add_argument('--prefix', default='backbone',
                        help="key prefix in DST (default 'backbone': load with init_cfg prefix='backbone'; "
                        "'' for none)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    src, dst = osp.abspath(args.src), osp.abspath(args.dst)
    if not osp.isfile(src):
        raise SystemExit(f'no such file: {src}')
    sd = load_timm_state_dict(src)
    arch = detect_arch(sd) if args.arch == 'auto' else args.arch
    out, dropped, notes = convert(sd, arch)
    prefix = f'{args.prefix.rstrip(".")}.' if args.prefix else ''
    os.makedirs(osp.dirname(dst) or '.', exist_ok=True)
    torch.save(dict(state_dict=OrderedDict((prefix + k, v) for k, v in out.items()),
                    meta=dict(converted_from=src, arch=arch, tool='tools/convert_weights.py')), dst)
    print(f'{src}: timm {arch}, {len(out)} tensors converted, {len(dropped)} dropped '
          f"({', '.join(dropped[:6])}{' ...' if len(dropped) > 6 else ''})")
    for note in notes:
        print(f'  {note}')
    print(f"written {dst}\nuse it with --cfg-options model.backbone.init_cfg.checkpoint={dst}"
          + ('' if prefix == 'backbone.' else f" model.backbone.init_cfg.prefix={args.prefix or 'None'}"))
    return dst


if __name__ == '__main__':
    sys.exit(0 if main() else 1)
