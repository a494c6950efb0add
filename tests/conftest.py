import copy
import os.path as osp
import sys

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

torch.set_num_threads(2)

DEMO_CFG = osp.join(REPO, 'configs', 'allinone_demo.py')


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory):
    """A small copy of the demo data set (5% of its size), generated once per test session."""
    from tools.make_demo_data import main
    out = str(tmp_path_factory.mktemp('demo_data'))
    main(['--out', out, '--scale', '0.05'])
    return out


def retarget(obj, old: str, new: str):
    """Replace the path prefix ``old`` by ``new`` in every string of a nested config."""
    if isinstance(obj, dict):
        for k in list(obj.keys()):
            obj[k] = retarget(obj[k], old, new)
        return obj
    if isinstance(obj, list):
        return [retarget(v, old, new) for v in obj]
    if isinstance(obj, tuple):
        return tuple(retarget(v, old, new) for v in obj)
    if isinstance(obj, str) and obj.startswith(old):
        return new + obj[len(old):]
    return obj


@pytest.fixture
def demo_cfg(demo_data, tmp_path):
    """The demo config pointed at the small data, a temporary work dir and a few iterations."""
    from mmengine.config import Config
    cfg = Config.fromfile(DEMO_CFG)
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator', 'test_evaluator'):
        cfg[key] = retarget(copy.deepcopy(cfg[key]), 'data/demo/', demo_data.rstrip('/') + '/')
    cfg.work_dir = str(tmp_path / 'work')
    cfg.train_cfg.max_iters = 4
    cfg.train_cfg.val_interval = 4
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = 2
    cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]
    for loader in cfg.train_dataloader.values():
        loader.batch_size = 2
    return cfg


@pytest.fixture(scope='session')
def registered():
    from mmengine.registry import DefaultScope

    import projects.allinone  # noqa: F401
    if DefaultScope.get_current_instance() is None:
        DefaultScope.get_instance('allinone-tests', scope_name='mmdet')
    return True


def toy_task_base():
    """Base of the synthetic task models of the routing tests: an AllInOne task with ``loss`` /
    ``predict`` on the shared features (the subclass defines both) and the OpenMMLab forward modes."""
    from mmengine.model import BaseModel

    class ToyTask(BaseModel):
        def _forward(self, feats, data_samples=None):
            return self.predict(feats)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            return self.loss(inputs) if mode == 'loss' else self.predict(inputs)

    return ToyTask


def register_toy(backbone_cls, task_cls):
    """Register a synthetic backbone (project registry) and task model (root registry) for a test."""
    from mmengine.registry import MODELS as ROOT_MODELS

    from projects.allinone.registry import MODELS
    MODELS.register_module(module=backbone_cls, force=True)
    ROOT_MODELS.register_module(module=task_cls, force=True)


@pytest.fixture(scope='session')
def challenge_tree(tmp_path_factory):
    """A small tree in the challenge layout with the real files' quirks (``tests/challenge_tree.py``):
    ``.train_root`` is a ``data_root`` for ``configs/_base_/datasets/track1.py``, ``.test_root`` the
    unlabeled test split. Written once per session: do not modify it (build your own with
    ``make_challenge_tree`` for that)."""
    from challenge_tree import make_challenge_tree
    return make_challenge_tree(str(tmp_path_factory.mktemp('challenge_tree')))


@pytest.fixture(scope='session')
def demo_small_config(demo_data, tmp_path_factory):
    """A child config of ``configs/allinone_demo.py`` on the small demo data: 4 iterations (batch 2),
    validation and a checkpoint at 4, a log row per iteration, test batches of one image, every
    detection kept at test time."""
    data = demo_data.rstrip('/')
    loaders = ', '.join(f'{task}=dict(batch_size={{batch}}, dataset=dict(data_root={data + "/" + sub + "/"!r}))'
                        for task, sub in (('det', 'dec'), ('seg', 'seg'), ('cls', 'cls')))
    config = tmp_path_factory.mktemp('demo_small') / 'demo_small.py'
    config.write_text('\n'.join([
        f'_base_ = [{DEMO_CFG!r}]',
        'train_dataloader = dict(' + loaders.format(batch=2) + ')',
        # one image per test batch, as the inferencer runs: the same computation, the same numbers
        'val_dataloader = dict(' + loaders.format(batch=1) + ')',
        'test_dataloader = val_dataloader',
        f'val_evaluator = dict(det=dict(ann_file={data + "/dec/val.json"!r}))',
        'test_evaluator = val_evaluator',
        'train_cfg = dict(max_iters=4, val_interval=4)',
        "param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]",
        'default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=4))',
        "visualizer = dict(vis_backends=[dict(type='LocalVisBackend')])",
        '# 4 iterations leave every detection score low: keep them all (up to max_per_img) to compare',
        'model = dict(tasks=dict(det=dict(test_cfg=dict(score_thr=0.0))))', '']))
    return str(config)


@pytest.fixture(scope='session')
def trained_demo(demo_data, demo_small_config, tmp_path_factory):
    """A small trained demo run, shared by the tests of the inference and visualisation tools:
    ``demo_small_config`` trained through ``tools/train.py``. Gives ``config``, ``checkpoint``
    (``iter_4.pth``), ``work_dir`` and ``data``."""
    import subprocess
    from types import SimpleNamespace
    work_dir = tmp_path_factory.mktemp('trained_demo') / 'work'
    proc = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'train.py'), demo_small_config, '--work-dir',
                           str(work_dir)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f'training the demo fixture failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
    return SimpleNamespace(config=demo_small_config, checkpoint=str(work_dir / 'iter_4.pth'), work_dir=str(work_dir),
                           data=demo_data)
