"""What the benchmarks and ``tools/compare_methods.py`` share: the demo model with real batches, one
training step, the peak tensor memory of a step, and how a result file is written.

``REPO`` is the checkout this package is installed from (editable install: configs/ and data/ beside it).
"""
import copy
import json
import os
import os.path as osp
import platform

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def build_demo(data_root, config='allinone_demo.py', rank=0, init_weights=False, model_overrides=None,
               batches=True):
    """``(cfg, model, {task: batch})``: a demo config's model and one real batch per task.

    Rank r takes samples ``r*B .. r*B+B-1`` of each task (B: the config's batch size), so the
    batches of R ranks together are the first R*B samples. ``model_overrides`` are merged into
    ``cfg.model`` before building (e.g. ``grad_split=dict(...)``, ``recon=dict(...)``);
    ``batches=False`` skips the data. Shared by the benchmarks.
    """
    import torch
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DATASETS, DefaultScope

    import projects.allinone  # noqa: F401
    from projects.allinone.registry import MODELS
    if DefaultScope.get_current_instance() is None:
        DefaultScope.get_instance('bench', scope_name='mmdet')
    cfg = Config.fromfile(osp.join(REPO, 'configs', config))
    if model_overrides:
        cfg.merge_from_dict(dict(model=copy.deepcopy(model_overrides)))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    if init_weights:
        model.init_weights()
    out = {}
    for task, loader in (cfg.train_dataloader.items() if batches else ()):
        ds_cfg = copy.deepcopy(loader.dataset)
        ds_cfg.data_root = ds_cfg.data_root.replace('data/demo/', data_root.rstrip('/') + '/')
        ds = DATASETS.build(ds_cfg)
        b = loader.batch_size
        out[task] = pseudo_collate([ds[i] for i in range(rank * b, (rank + 1) * b)])
    return cfg, model, out


def build(data_root, model_overrides=None, batches=True):
    _, model, out = build_demo(data_root, model_overrides=model_overrides, batches=batches)
    return model, out


def step(model, wrapper, batch):
    model.train()
    model.train_step(batch, wrapper)


def cpu_machine(**extra) -> dict:
    """What a result file says of the CPU machine it was measured on (plus ``extra`` settings)."""
    return dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), **extra)


def write_result(res: dict, path: str) -> None:
    """Write a benchmark's result dict as JSON, creating its folder."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(res, f, indent=1)


def peak_step_memory_mb(model, wrapper, batch) -> float:
    """Peak of the profiler's memory timeline (all live CPU tensors) over one step, after 2 warm-ups."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile
    for _ in range(2):
        step(model, wrapper, batch)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        step(model, wrapper, batch)
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, 'timeline.json')
        prof.export_memory_timeline(path, device='cpu')
        with open(path) as f:
            _, sizes = json.load(f)
    return max(sum(s) for s in sizes) / 2**20
