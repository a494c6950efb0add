#!/usr/bin/env python
"""Step time and memory of the per-task gradient wrapper (TBGC, Sum) against the vanilla joint step.

Arms, all on the same model (the demo's) and the same real demo batches:
  vanilla   mmengine ``OptimWrapper``: one backward of the summed loss, global clip 0.1
  sum       ``MultiTaskOptimWrapper`` + ``SumAggregator`` (per-task backward passes) + global clip 0.1
  tbgc      ``MultiTaskOptimWrapper`` + ``TBGCAggregator(max_norm=0.1)`` (streaming)
  tbgc_mat  the same through the matrix path (holds all T task gradients), for reference

Speed: the arms are interleaved step by step in one process (shared noise), and the median of the
per-step ratios to vanilla is reported. Memory: each arm runs alone in a fresh process; after two
warm-up steps (optimizer state allocated) one step runs under torch's profiler and the peak of its
memory timeline (all live CPU tensors: parameters, optimizer state, activations, gradients,
buffers) is reported. Process RSS is useless here: its peak is set while importing the libraries.

    python benchmarks/bench_tbgc.py [--steps 20] [--out benchmarks/results/tbgc.json]
"""
import argparse
import copy
import json
import os
import os.path as osp
import platform
import statistics
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)
ARMS = ('vanilla', 'sum', 'tbgc', 'tbgc_mat')


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


def make_wrapper(arm, model):
    import torch
    from mmengine.optim import OptimWrapper

    from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if arm == 'vanilla':
        return OptimWrapper(opt, clip_grad=dict(max_norm=0.1))
    if arm == 'sum':
        return MultiTaskOptimWrapper(opt, aggregator=dict(type='SumAggregator'), clip_grad=dict(max_norm=0.1),
                                     stats_interval=0)
    return MultiTaskOptimWrapper(opt, aggregator=dict(type='TBGCAggregator', max_norm=0.1),
                                 streaming=(arm == 'tbgc'), stats_interval=0)


def step(model, wrapper, batch):
    model.train()
    model.train_step(batch, wrapper)


def run_speed(args):
    import torch
    torch.set_num_threads(args.threads)
    model, batch = build(args.data)
    models = {arm: copy.deepcopy(model) for arm in ARMS}
    wrappers = {arm: make_wrapper(arm, models[arm]) for arm in ARMS}
    times = {arm: [] for arm in ARMS}
    for i in range(args.warmup + args.steps):
        order = ARMS if i % 2 == 0 else ARMS[::-1]
        for arm in order:
            t0 = time.perf_counter()
            step(models[arm], wrappers[arm], batch)
            if i >= args.warmup:
                times[arm].append(time.perf_counter() - t0)
    out = dict()
    for arm in ARMS:
        ratios = [t / v for t, v in zip(times[arm], times['vanilla'])]
        out[arm] = dict(median_s=statistics.median(times[arm]), ratio_to_vanilla=statistics.median(ratios))
    shared = sum(p.numel() * p.element_size() for _, p in model.shared_parameters())
    return dict(speed=out, shared_param_mb=shared / 2**20)


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


def run_memory_arm(args):
    import torch
    torch.set_num_threads(args.threads)
    model, batch = build(args.data)
    print(json.dumps(dict(peak_mb=peak_step_memory_mb(model, make_wrapper(args.arm, model), batch))))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=osp.join(REPO, 'data', 'demo'))
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'results', 'tbgc.json'))
    p.add_argument('--arm', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.arm:
        return run_memory_arm(args)
    if not osp.exists(osp.join(args.data, 'meta.json')):
        subprocess.check_call([sys.executable, osp.join(REPO, 'tools', 'make_demo_data.py'), '--out', args.data])
    res = run_speed(args)
    mem = {}
    for arm in ARMS:
        outp = subprocess.check_output([sys.executable, __file__, '--arm', arm, '--data', args.data,
                                        '--threads', str(args.threads)], stderr=subprocess.DEVNULL)
        mem[arm] = json.loads(outp.decode().strip().splitlines()[-1])['peak_mb']
    res['peak_tensor_mb'] = mem
    res['extra_over_vanilla_mb'] = {a: mem[a] - mem['vanilla'] for a in ARMS}
    res['machine'] = cpu_machine(threads=args.threads)
    res['steps'] = args.steps
    write_result(res, args.out)
    print(f"shared (backbone) parameters: {res['shared_param_mb']:.1f} MB")
    print("| arm | median step (s) | step time / vanilla | peak tensor memory (MB) | extra over vanilla (MB) |")
    print('|---|---|---|---|---|')
    for arm in ARMS:
        s = res['speed'][arm]
        print(f"| {arm} | {s['median_s']:.3f} | {s['ratio_to_vanilla']:.3f} | {mem[arm]:.1f} | "
              f"{res['extra_over_vanilla_mb'][arm]:+.1f} |")


if __name__ == '__main__':
    main()
