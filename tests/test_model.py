"""AllInOneModel: the three real OpenMMLab branches in loss and predict mode, config-driven tasks."""
import copy

import pytest
import torch
from mmengine.config import Config

from conftest import DEMO_CFG


@pytest.fixture(scope='module')
def model_cfg():
    return Config.fromfile(DEMO_CFG).model


def build(cfg):
    from projects.allinone.registry import MODELS
    return MODELS.build(copy.deepcopy(cfg))


def loader_batch(cfg, task, n=2, train=True):
    """A real batch of ``task`` from the demo data through its dataset pipeline."""
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DATASETS
    ds_cfg = copy.deepcopy((cfg.train_dataloader if train else cfg.val_dataloader)[task].dataset)
    ds = DATASETS.build(ds_cfg)
    return pseudo_collate([ds[i] for i in range(n)]), ds


@pytest.fixture(scope='module')
def model(registered, model_cfg):
    torch.manual_seed(0)
    return build(model_cfg)


def test_branches_are_the_libraries_own_models(model):
    from mmdet.models.detectors import RTMDet
    from mmpretrain.models.classifiers import ImageClassifier
    from mmseg.models.segmentors import EncoderDecoder
    assert isinstance(model.tasks['det'], RTMDet)
    assert isinstance(model.tasks['seg'], EncoderDecoder)
    assert isinstance(model.tasks['cls'], ImageClassifier)
    assert model.task_names == ['det', 'seg', 'cls']
    # each task keeps its own data preprocessor; the backbone is the one shared module
    assert type(model.tasks['det'].data_preprocessor).__name__ == 'DetDataPreprocessor'
    assert type(model.tasks['seg'].data_preprocessor).__name__ == 'SegDataPreProcessor'
    assert type(model.tasks['cls'].data_preprocessor).__name__ == 'ClsDataPreprocessor'
    assert not list(model.tasks['det'].backbone.parameters())


def test_partition_covers_every_parameter_once(model):
    part = model.parameter_partition()
    ids = [id(p) for ps in part.values() for p in ps]
    assert len(ids) == len(set(ids)) == len([p for p in model.parameters() if p.requires_grad])
    assert set(part) == {'shared', 'det', 'seg', 'cls'}


@pytest.mark.parametrize('task', ['det', 'seg', 'cls'])
def test_loss_mode_reaches_backbone_and_only_own_head(model, demo_cfg, task):
    batch, _ = loader_batch(demo_cfg, task)
    model.train()
    model.zero_grad()
    loss, logs = model.task_loss(task, batch)
    assert torch.isfinite(loss) and loss > 0
    assert f'{task}.loss' in logs
    loss.backward()
    part = model.parameter_partition()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part['shared'])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part[task])
    for other in set(part) - {'shared', task}:
        assert all(p.grad is None for p in part[other])
    model.zero_grad()


@pytest.mark.parametrize('task,field,cls_name', [('det', 'pred_instances', 'DetDataSample'),
                                                  ('seg', 'pred_sem_seg', 'SegDataSample'),
                                                  ('cls', 'pred_label', 'DataSample')])
def test_predict_mode_returns_the_libraries_data_samples(model, demo_cfg, task, field, cls_name):
    batch, ds = loader_batch(demo_cfg, task, train=False)
    model.eval()
    with torch.no_grad():
        out = model.val_step({task: batch})
    assert len(out) == 2
    assert type(out[0]).__name__ == cls_name
    assert hasattr(out[0], field)
    if task == 'seg':  # predictions come back at the original image size
        assert tuple(out[0].pred_sem_seg.data.shape[-2:]) == tuple(out[0].ori_shape)
    if task == 'det':
        assert out[0].pred_instances.bboxes.shape[-1] == 4


def test_forward_modes(model, demo_cfg):
    batch, _ = loader_batch(demo_cfg, 'cls')
    data = model.tasks['cls'].data_preprocessor(batch, False)
    feats = model(data['inputs'])
    assert len(feats) == 4
    losses = model(data['inputs'], data['data_samples'], mode='loss', task='cls')
    assert 'loss' in losses
    with pytest.raises(ValueError, match='needs a task'):
        model(data['inputs'], mode='predict')


def test_drop_a_task_and_add_a_second_detector_by_config(registered, model_cfg, demo_cfg):
    cfg = copy.deepcopy(model_cfg)
    cfg.tasks.pop('det')
    two = build(cfg)
    assert two.task_names == ['seg', 'cls']
    cfg = copy.deepcopy(model_cfg)
    cfg.tasks['det2'] = copy.deepcopy(cfg.tasks['det'])
    cfg.tasks['det2'].bbox_head.feat_channels = 32  # a different head on the same shared features
    four = build(cfg)
    assert four.task_names == ['det', 'seg', 'cls', 'det2']
    batch, _ = loader_batch(demo_cfg, 'det')
    loss, logs = four.task_loss('det2', batch)
    assert 'det2.loss' in logs and torch.isfinite(loss)


def test_config_errors_are_clear(registered, model_cfg):
    cfg = copy.deepcopy(model_cfg)
    cfg.tasks = {}
    with pytest.raises(ValueError, match='non-empty'):
        build(cfg)
    cfg = copy.deepcopy(model_cfg)
    cfg.tasks.det.backbone = dict(type='ResNet', depth=18)
    with pytest.raises(ValueError, match='tasks.det has a backbone of its own'):
        build(cfg)
    cfg = copy.deepcopy(model_cfg)
    cfg.task_loss_weights = dict(dett=2.0)
    with pytest.raises(KeyError, match='unknown task'):
        build(cfg)


def test_unknown_task_in_batch(model, demo_cfg):
    batch, _ = loader_batch(demo_cfg, 'cls')
    with pytest.raises(KeyError, match="unknown task 'car'"):
        model.val_step({'car': batch})


def test_a_shared_neck_counts_as_shared_and_every_task_reaches_it(registered, demo_cfg):
    from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper

    from conftest import REPO
    cfg = Config.fromfile(f'{REPO}/configs/allinone_demo_shared_neck.py').model
    torch.manual_seed(0)
    model = build(cfg)
    part = model.parameter_partition()
    neck = {id(p) for p in model.neck.parameters()}
    assert neck and neck <= {id(p) for p in part['shared']}
    assert not any(id(p) in neck for t in model.task_names for p in part[t])
    reached = set()
    for task in model.task_names:
        model.zero_grad(set_to_none=True)
        batch, _ = loader_batch(demo_cfg, task)
        loss, _ = model.task_loss(task, batch)
        loss.backward()
        got = {n for n, p in model.neck.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert got, task
        reached |= got
    # detection reads strides 8-32 only, so the stride-4 convs of the FPN are the others' alone
    assert reached == {n for n, _ in model.neck.named_parameters()}
    # the methods combine the neck's gradients with the backbone's
    before = [p.detach().clone() for p in model.neck.parameters()]
    wrapper = MultiTaskOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1),
                                    aggregator=dict(type='PCGradAggregator'))
    model.zero_grad(set_to_none=True)
    model.train_step({t: loader_batch(demo_cfg, t)[0] for t in model.task_names}, wrapper)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.neck.parameters()))
    assert set(wrapper.last_stats) >= {f'{t}.weight' for t in model.task_names}
