"""Pretrained backbones: loading through AllInOneModel.init_weights, the load report, and the checks
that stop a run whose weights cannot be had. Every checkpoint is written by the test itself."""
import logging
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO

ARCH = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)


def vit(img_size, **kw):
    return dict(_scope_='mmpretrain', type='VisionTransformer', arch=ARCH, img_size=img_size, patch_size=8, **kw)


def allinone(backbone):
    return dict(type='AllInOneModel', backbone=backbone, tasks=dict(cls=dict(
        _scope_='mmpretrain', type='ImageClassifier', neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=3, in_channels=32))))


def write_classifier_checkpoint(path, backbone, extra=None, drop=()):
    """An mmpretrain-zoo-like file: {'state_dict': {'backbone.*', 'head.*'}, 'meta': ...}."""
    sd = {f'backbone.{k}': v for k, v in backbone.state_dict().items() if not any(k.startswith(d) for d in drop)}
    sd['head.fc.weight'] = torch.randn(5, 32)
    sd.update(extra or {})
    torch.save({'state_dict': sd, 'meta': dict(note='written by the test')}, path)
    return path


class Captured(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def log_records():
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    handler = Captured()
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


def _report_records(records):
    return [r for r in records if 'backbone load report' in r.getMessage()]


def test_vit_checkpoint_loads_with_pos_embed_resized_and_is_reported(registered, tmp_path, log_records):
    from projects.allinone.registry import MODELS
    torch.manual_seed(0)
    src = MODELS.build(vit(32, final_norm=True))  # 4x4 patches + cls, as pretrained at a smaller size
    ckpt = write_classifier_checkpoint(str(tmp_path / 'vit.pth'), src)
    model = MODELS.build(allinone(vit(48, final_norm=False, out_type='featmap', out_indices=(1, ),
                                      init_cfg=dict(type='Pretrained', checkpoint=ckpt, prefix='backbone'))))
    model.init_weights()
    bb = model.backbone
    for name, p in src.named_parameters():
        if name not in ('pos_embed', 'ln1.weight', 'ln1.bias'):
            assert torch.equal(dict(bb.named_parameters())[name], p), name
    # pos_embed: cls token kept, the 4x4 grid resized bicubically to the 6x6 grid of 48 px
    grid = src.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(6, 6), mode='bicubic', align_corners=False).flatten(2).transpose(1, 2)
    assert bb.pos_embed.shape == (1, 37, 32)
    assert torch.equal(bb.pos_embed[:, :1], src.pos_embed[:, :1])
    assert torch.allclose(bb.pos_embed[:, 1:], want, atol=1e-6)
    (rec, ) = _report_records(log_records)
    msg = rec.getMessage()
    assert rec.levelno == logging.INFO  # nothing missing
    assert '28 of 28 tensors loaded' in msg and '2 unexpected' in msg
    rows = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in msg.splitlines()[2:]
            if line.strip() and line.split()[1].isdigit()}
    assert rows['layers.0'] == [12, 0, 0, 0] and rows['layers.1'] == [12, 0, 0, 0]
    assert rows['pos_embed'] == [1, 0, 0, 0] and rows['ln1'] == [0, 0, 0, 2]  # final norm off in the model
    assert 'unexpected: ln1.weight, ln1.bias' in msg


def test_partial_checkpoint_warns_with_missing_and_mismatched_by_module(registered, tmp_path, log_records):
    from projects.allinone.registry import MODELS
    src = MODELS.build(vit(32))
    bad = {'backbone.patch_embed.projection.bias': torch.zeros(16)}  # a 16-channel stem: shape mismatch
    ckpt = write_classifier_checkpoint(str(tmp_path / 'part.pth'), src, extra=bad, drop=('layers.1.', ))
    model = MODELS.build(allinone(vit(32, init_cfg=dict(type='Pretrained', checkpoint=ckpt, prefix='backbone'))))
    before = model.backbone.layers[1].attn.qkv.weight.detach().clone()
    model.init_weights()
    (rec, ) = _report_records(log_records)
    msg = rec.getMessage()
    assert rec.levelno == logging.WARNING
    assert '17 of 30 tensors loaded; 1 shape mismatched, 12 missing' in msg
    rows = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in msg.splitlines()[2:]
            if line.strip() and line.split()[1].isdigit()}
    assert rows['layers.1'] == [0, 0, 12, 0] and rows['patch_embed'] == [1, 1, 0, 0]
    assert 'shape mismatch patch_embed.projection.bias: checkpoint [16], model [32]' in msg
    # the missing block keeps its own initialisation (init_weights ran on it, the checkpoint did not)
    assert not torch.equal(model.backbone.layers[1].attn.qkv.weight, src.layers[1].attn.qkv.weight)
    assert before.shape == model.backbone.layers[1].attn.qkv.weight.shape


def test_checkpoint_of_another_model_is_an_error(registered, tmp_path):
    from projects.allinone.registry import MODELS
    path = str(tmp_path / 'timm_like.pth')
    torch.save({'blocks.0.attn.qkv.weight': torch.zeros(96, 32), 'patch_embed.proj.weight': torch.zeros(32, 3, 8, 8)},
               path)
    model = MODELS.build(allinone(vit(32, init_cfg=dict(type='Pretrained', checkpoint=path))))
    with pytest.raises(RuntimeError, match='none of the 30 backbone tensors was found in .*timm_like.pth') as e:
        model.init_weights()
    assert 'tools/convert_weights.py' in str(e.value) and 'model.backbone.init_cfg=None' in str(e.value)


def _cfg(init_cfg, **top):
    from mmengine.config import Config
    return Config(dict(model=allinone(vit(32, init_cfg=init_cfg)), **top))


def test_unreachable_url_stops_with_the_url_and_where_to_put_the_file(tmp_path, monkeypatch):
    from projects.allinone.models.pretrained import check_pretrained
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    url = 'http://127.0.0.1:9/zoo/vit-tiny_pretrained-0123abcd.pth'  # nothing listens on port 9
    cfg = _cfg(dict(type='Pretrained', checkpoint=url, prefix='backbone'))
    with pytest.raises(SystemExit) as e:
        check_pretrained(cfg, timeout=5, say=lambda m: None)
    msg = str(e.value)
    cache = osp.join(str(tmp_path / 'torch_home'), 'hub', 'checkpoints', 'vit-tiny_pretrained-0123abcd.pth')
    assert url in msg and cache in msg
    assert 'model.backbone.init_cfg.checkpoint=' in msg and 'model.backbone.init_cfg=None' in msg


def test_url_in_the_hub_cache_loads_without_network(registered, tmp_path, monkeypatch, log_records):
    """The file put where the error says: the check passes and mmengine loads the URL from the cache."""
    from projects.allinone.models.pretrained import check_pretrained, hub_cache_path
    from projects.allinone.registry import MODELS
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    url = 'http://127.0.0.1:9/zoo/vit-tiny_pretrained-0123abcd.pth'
    cache = hub_cache_path(url)
    assert cache.startswith(str(tmp_path / 'torch_home'))
    import os
    os.makedirs(osp.dirname(cache))
    src = MODELS.build(vit(32))
    write_classifier_checkpoint(cache, src)
    cfg = _cfg(dict(type='Pretrained', checkpoint=url, prefix='backbone'))
    said = []
    assert check_pretrained(cfg, timeout=5, say=said.append) == url
    assert cache in said[0]
    model = MODELS.build(cfg.model)
    model.init_weights()
    assert torch.equal(model.backbone.layers[1].ffn.layers[1].weight, src.layers[1].ffn.layers[1].weight)
    assert '30 of 30 tensors loaded' in _report_records(log_records)[0].getMessage()


def test_local_file_from_scratch_and_load_from(tmp_path):
    from projects.allinone.models.pretrained import check_pretrained
    missing = str(tmp_path / 'nowhere' / 'vit.pth')
    with pytest.raises(SystemExit, match='does not exist: .*nowhere/vit.pth'):
        check_pretrained(_cfg(dict(type='Pretrained', checkpoint=missing)), say=lambda m: None)
    torch.save({}, str(tmp_path / 'vit.pth'))
    cfg = _cfg(dict(type='Pretrained', checkpoint=str(tmp_path / 'vit.pth')))
    assert check_pretrained(cfg, say=lambda m: None) == str(tmp_path / 'vit.pth')
    said = []
    assert check_pretrained(_cfg(None), say=said.append) is None and 'from scratch' in said[0]
    # a run from load_from (finetuning) or --resume takes the backbone from that checkpoint: the
    # pretrained init (and its download) is dropped, with a note
    cfg = _cfg(dict(type='Pretrained', checkpoint=missing), load_from='work/iter_100.pth')
    said = []
    assert check_pretrained(cfg, say=said.append) is None
    assert cfg.model.backbone.init_cfg is None and 'load_from=work/iter_100.pth' in said[0]


def test_competition_config_names_the_mmpretrain_zoo_checkpoint():
    """configs/allinone.py starts from mmpretrain's vit-base-p16_in21k-pre_3rdparty_in1k-384px (its
    metafile's URL), and --cfg-options switches it to a local file or off."""
    import mmpretrain
    import yaml
    from mmengine.config import Config, DictAction
    meta = osp.join(osp.dirname(mmpretrain.__file__), '.mim', 'configs', 'vision_transformer', 'metafile.yml')
    with open(meta) as f:
        models = {m['Name']: m for m in yaml.safe_load(f)['Models']}
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'allinone.py'))
    init = cfg.model.backbone.init_cfg
    assert init.type == 'Pretrained' and init.prefix == 'backbone'
    assert init.checkpoint == models['vit-base-p16_in21k-pre_3rdparty_in1k-384px']['Weights']
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    cfg.merge_from_dict(p.parse_args(['--cfg-options', 'model.backbone.init_cfg.checkpoint=/w/vit.pth']).cfg_options)
    assert cfg.model.backbone.init_cfg.checkpoint == '/w/vit.pth' and cfg.model.backbone.init_cfg.prefix == 'backbone'
    cfg.merge_from_dict(p.parse_args(['--cfg-options', 'model.backbone.init_cfg=None']).cfg_options)
    assert cfg.model.backbone.init_cfg is None


def test_recon_copies_load_from_the_plain_keys_and_count_as_matched(registered, tmp_path, log_records):
    """A layer Recon gives one copy per task: every copy loads the plain checkpoint's key, and the load
    report maps the copies' keys back through the routing method (nothing missing, nothing unexpected)."""
    from projects.allinone.registry import MODELS
    torch.manual_seed(0)
    src = MODELS.build(vit(32, final_norm=False))
    ckpt = write_classifier_checkpoint(str(tmp_path / 'vit.pth'), src)
    cfg = allinone(vit(32, final_norm=False, init_cfg=dict(type='Pretrained', checkpoint=ckpt, prefix='backbone')))
    cfg['tasks']['cls2'] = cfg['tasks']['cls']
    cfg['recon'] = dict(layers=['backbone.layers.1.attn.proj'])
    model = MODELS.build(cfg)
    model.init_weights()
    layer = model.backbone.layers[1].attn.proj
    for task in ('cls', 'cls2'):
        assert torch.equal(layer.copies[task].weight, src.layers[1].attn.proj.weight)
    (rec, ) = _report_records(log_records)
    msg = rec.getMessage()
    n = len([k for k in src.state_dict() if not k.endswith('num_batches_tracked')])
    assert rec.levelno == logging.INFO
    assert f'{n} of {n} tensors loaded; 0 shape mismatched, 0 missing' in msg and '0 unexpected' in msg
