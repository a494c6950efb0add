"""docs/challenge.md "Train for the challenge", run as written on the challenge-layout fixture tree.

Each ```bash block of the section runs in order (bash -euo pipefail, from the repository root). The
first block sets the walkthrough's variables; the test gives them its own values: the fixture tree
for ``DATA`` / ``TEST``, a temporary ``WORK``, ``GPUS=1``, for ``CONFIG`` the competition config
with its model and input sizes made small (same datasets, loops, evaluators, boards, submission keys;
a ViT-B + DINO build alone takes ~40 s here) and for ``TIMM`` a random timm ViT of the small shape.
Training commands get ``--max-iters 1`` (a documented option). A block naming a tool or option that
the checkout lacks fails, naming it.
"""
import json
import os
import os.path as osp
import re
import shlex
import socket
import subprocess

import pytest
from mmengine.config import Config

from conftest import REPO

DOC = osp.join(REPO, 'docs', 'challenge.md')
SECTION = 'Train for the challenge'
VARIABLES = ('CONFIG', 'DATA', 'TEST', 'WORK', 'GPUS', 'TIMM')
#: input sizes of the competition pipelines -> small ones for the fixture's 64-160 px images
SMALL_SIZES = {896: 64, 1280: 96, 720: 54, 448: 64}


def walkthrough_blocks():
    text = open(DOC).read()
    start = text.find(f'\n## {SECTION}\n')
    assert start >= 0, f'docs/challenge.md has no section "## {SECTION}"'
    end = text.find('\n## ', start + 1)
    return re.findall(r'```bash\n(.*?)```', text[start:end if end > 0 else None], re.S)


def commands(block):
    """The block's command lines, continuation lines joined, comments dropped."""
    joined = re.sub(r'\\\n\s*', ' ', block)
    return [line.split(' #')[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith('#')]


def missing_parts(block):
    """Tools and options a block uses that this checkout does not have."""
    common = open(osp.join(REPO, 'projects', 'allinone', 'utils', 'cli.py')).read()
    missing = []
    for cmd in commands(block):
        tools = re.findall(r'tools/[\w/]+\.(?:py|sh)', cmd)
        for tool in tools:
            if not osp.exists(osp.join(REPO, tool)):
                missing.append(f'{tool} does not exist in this checkout yet')
        if not tools:
            continue
        target = tools[0].replace('dist_train.sh', 'train.py').replace('dist_test.sh', 'test.py')
        source = open(osp.join(REPO, target)).read() if osp.exists(osp.join(REPO, target)) else ''
        for opt in re.findall(r'(?<!\S)(--[a-z][\w-]*)', cmd):
            if f"'{opt}'" not in source and f"'{opt}'" not in common:
                missing.append(f'{target} has no option {opt} in this checkout yet')
    return missing


def _resize(obj):
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resize(v) for v in obj)
    return SMALL_SIZES.get(obj, obj) if isinstance(obj, int) else obj


def _small_pipeline(pipeline):
    for t in pipeline:
        for key in ('scale', 'crop_size', 'size'):
            if key in t:
                t[key] = _resize(t[key])
        for branch in t.get('branches', []):
            _small_pipeline(branch)
        for sub in t.get('transforms', []) if isinstance(t.get('transforms'), list) else []:
            if isinstance(sub, dict):
                _small_pipeline([sub])


def small_competition_config(path):
    """configs/allinone.py with a 4-layer 64-wide ViT, one-layer DINO and small inputs, written to ``path``."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'allinone.py'))
    embed = 64
    cfg.model.backbone.update(arch=dict(embed_dims=embed, num_layers=4, num_heads=2, feedforward_channels=128),
                              img_size=64, out_indices=(0, 1, 2, 3), drop_path_rate=0.0)
    det = cfg.model.tasks.det
    det.neck[0].update(in_channels=[embed] * 4, out_channels=embed)
    det.neck[1].in_channels = [embed] * 4  # DINO keeps its 256 channels (its decoder's sine embedding needs them)
    det.num_queries = 30
    det.encoder.num_layers = det.decoder.num_layers = 1
    det.encoder.layer_cfg.ffn_cfg.feedforward_channels = 256
    det.decoder.layer_cfg.ffn_cfg.feedforward_channels = 256
    det.dn_cfg.group_cfg.num_dn_queries = 10
    seg = cfg.model.tasks.seg
    seg.data_preprocessor.size = (64, 64)
    for head in (seg.decode_head, seg.auxiliary_head):
        head.update(in_channels=embed, channels=16)
    cfg.model.tasks.cls.head.in_channels = embed
    for section in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        for loader in cfg[section].values():
            loader.update(num_workers=0, persistent_workers=False)
            _small_pipeline(loader.dataset.pipeline)
    cfg.train_dataloader.cls.batch_size = 4
    cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]
    cfg.dump(path)
    return path


def small_timm_checkpoint(path):
    """A randomly initialised timm ViT with the small config's backbone shape, saved as timm saves it
    (the walkthrough's ``$TIMM``; no download)."""
    import torch
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    torch.save(VisionTransformer(img_size=64, patch_size=16, embed_dim=64, depth=4, num_heads=2, mlp_ratio=2.0,
                                 num_classes=0).state_dict(), path)
    return path


@pytest.fixture(scope='module')
def walk(challenge_tree, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('walkthrough')
    with socket.socket() as s:  # dist_train.sh's PORT: a free one (other runs may share the machine)
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    values = dict(CONFIG=small_competition_config(str(tmp / 'allinone_small.py')),
                  DATA=challenge_tree.train_root.rstrip('/'), TEST=challenge_tree.test_root.rstrip('/'),
                  WORK=str(tmp / 'work'), GPUS='1', TIMM=small_timm_checkpoint(str(tmp / 'timm_vit.pth')))
    return dict(values=values, tree=challenge_tree, env=dict(os.environ, PORT=str(port), OMP_NUM_THREADS='2'),
                failed=[])


BLOCKS = walkthrough_blocks()


def test_first_block_sets_the_walkthrough_variables():
    assigned = [line.split('=')[0] for line in commands(BLOCKS[0])]
    assert tuple(assigned) == VARIABLES, 'the test sets these variables; update VARIABLES with docs/challenge.md'


@pytest.mark.slow
@pytest.mark.parametrize('index', range(1, len(BLOCKS)))
def test_walkthrough_block(index, walk):
    block = BLOCKS[index]
    missing = missing_parts(block)
    assert not missing, 'docs/challenge.md names what the checkout lacks: ' + '; '.join(missing)
    if walk['failed']:
        pytest.fail(f'an earlier block failed: {walk["failed"]}')
    lines = [f'{k}={shlex.quote(v)}' for k, v in walk['values'].items()]
    for cmd in re.sub(r'\\\n\s*', ' ', block).splitlines():  # continuation lines joined
        if re.search(r'tools/(train\.py|dist_train\.sh)', cmd):
            cmd = cmd.split(' #')[0] + ' --max-iters 1'
        lines.append(cmd)
    script = '\n'.join(lines)
    proc = subprocess.run(['bash', '-euo', 'pipefail', '-c', script], cwd=REPO, env=walk['env'],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        walk['failed'].append(index)
    assert proc.returncode == 0, f'block {index}:\n{block}\n--- output ---\n{(proc.stdout + proc.stderr)[-5000:]}'
    work = walk['values']['WORK']
    if 'dist_train.sh' in block:
        board = json.load(open(osp.join(work, 'leaderboard.json')))
        assert {'leaderboard/A', 'leaderboard/B'} <= set(board)
        assert open(osp.join(work, 'last_checkpoint')).read().strip().endswith('iter_1.pth')
    if '--images' in block:  # the unlabeled test split, detection ids as the annotation files have them
        sub = json.load(open(osp.join(work, 'submission.json')))
        tree = walk['tree']
        assert set(sub) == {'cls', 'dec', 'seg'} and len(sub['cls']) == tree.counts['cls']['test']
        test_ids = {i['id'] for i in json.load(open(osp.join(tree.test_root, 'dec', 'test.json')))['images']}
        file_ids = {c['id'] for c in tree.det_categories}
        assert all(d['image_id'] in test_ids and d['category_id'] in file_ids for d in sub['dec'])
    if 'score_submission.py' in block:
        assert re.search(r'leaderboard A', proc.stdout + proc.stderr)
