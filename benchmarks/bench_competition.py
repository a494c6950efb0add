#!/usr/bin/env python
"""The competition configs at their full input size: parameters, CPU step time and peak memory of each
task at batch 1, and the estimated per-GPU memory at the config's per-GPU batch sizes.

    python benchmarks/bench_competition.py [--configs allinone.py ...] [--tasks det seg cls] [--scale 1.0]
        [--threads 2] [--min-free-gb 20] [--out benchmarks/results/competition.json]

Each (config, task) runs alone in a fresh process, one after another: the model is built from the
config (pretrained init off: random weights cost the same), one synthetic image at the config's
training input size (``det_scale`` / ``seg_crop`` / ``cls_size`` of the dataset config, times
``--scale``; detection with 8 boxes, segmentation with a random 19-class label map) goes through the
task's own data preprocessor, the shared backbone and the task's loss, then its backward and one step
of the config's optim wrapper (TBGC, layer-wise lr decay, AdamW): a real training step of that task.

Measured per (config, task): the step's wall time, the process's peak RSS (``ru_maxrss``) and its RSS
before the step, and the bytes of the tensors autograd saves for the backward pass (activations;
parameters excluded). The parent watches the system's available memory while a child runs and stops
the child if less than 1.5 GB remains; a task that could not run is reported as such.

Estimated per-GPU memory at the per-GPU batches of the config (fp32 training): weights + gradients +
AdamW's two moments (16 bytes per trainable parameter, 4 per frozen one) + the per-task wrapper's
one backbone-sized buffer + the EMA copy where the config has an EMAHook + the activations of the
heaviest task, ``max_t(batch_t x saved_t)``: the tasks run one after another and each task's graph is
freed after its backward. With AMP the activations are about halved (``est_amp``). Not included: the
allocator's fragmentation and cuDNN workspaces (commonly 10-30 % more), the data loader.
"""
import argparse
import json
import os.path as osp
import resource
import subprocess
import sys
import threading
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = ['allinone.py', 'tbgc-dino-m2f-arcface_swin-l-in21k-pre_8gpu-52k_track1.py']
TASKS = ('det', 'seg', 'cls')
GB = 2 ** 30


def mem_available_gb() -> float:
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) / 2 ** 20
    return float('nan')


def rss_gb(pid='self') -> float:
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return 0.0


# ---------------------------------------------------------------------------- the child: one step
def input_size(cfg, task: str, scale: float):
    size = dict(det=cfg.get('det_scale'), seg=cfg.get('seg_crop'), cls=cfg.get('cls_size'))[task]
    if size is None:
        raise KeyError(f'the config has no {dict(det="det_scale", seg="seg_crop", cls="cls_size")[task]}')
    w, h = (size, size) if isinstance(size, int) else size
    return max(32, int(round(h * scale))), max(32, int(round(w * scale)))


def synthetic_batch(cfg, model, task: str, hw, seed: int = 0) -> dict:
    """One image of size ``hw`` with the labels the task's loss reads."""
    import torch
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    meta = dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0), flip=False, img_id=0,
                img_path='synthetic.jpg')
    head = model.tasks[task]
    if task == 'det':
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData
        n, num_classes = 8, head.bbox_head.num_classes
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
        wh = 16 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.15, h * 0.15])
        sample = DetDataSample(metainfo=meta)
        sample.gt_instances = InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                                           labels=torch.randint(0, num_classes, (n, ), generator=g))
    elif task == 'seg':
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        sample = SegDataSample(metainfo=meta)
        labels = torch.randint(0, head.decode_head.num_classes, (1, h // 32 + 1, w // 32 + 1), generator=g)
        labels = labels.repeat_interleave(32, 1).repeat_interleave(32, 2)[:, :h, :w]  # 32-px blobs
        sample.gt_sem_seg = PixelData(data=labels.long())
    else:
        from mmpretrain.structures import DataSample
        sample = DataSample(metainfo=meta).set_gt_label(int(torch.randint(0, 196, (1, ), generator=g)))
    return dict(inputs=[img], data_samples=[sample])


def child(config: str, task: str, scale: float, threads: int) -> dict:
    import torch
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope

    import projects.allinone  # noqa: F401
    from projects.allinone.registry import MODELS
    torch.set_num_threads(threads)
    DefaultScope.get_instance('bench_competition', scope_name='mmdet')
    cfg = Config.fromfile(osp.join(REPO, 'configs', config))
    cfg.model.backbone.init_cfg = None
    if scale < 1:  # a reduced run (testing this script): sizes that follow the input
        seg_pre = cfg.model.tasks.get('seg') and cfg.model.tasks.seg.get('data_preprocessor', {})
        if seg_pre and seg_pre.get('size'):
            seg_pre.size = tuple(max(32, int(round(v * scale))) for v in seg_pre.size)
        if cfg.model.tasks.get('det') and 'num_queries' in cfg.model.tasks.det:
            cfg.model.tasks.det.num_queries = min(cfg.model.tasks.det.num_queries, 50)
    for name, t in list(cfg.model.tasks.items()):
        if t is not None and name != task:
            cfg.model.tasks[name] = None  # one task per process: its own peak
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    hw = input_size(cfg, task, scale)
    batch = synthetic_batch(cfg, model, task, hw)
    params = {id(p) for p in model.parameters()}
    saved, seen = [0], set()

    def pack(t):
        try:
            key = t.untyped_storage().data_ptr()
        except Exception:
            return t
        if key not in seen and id(t) not in params:
            seen.add(key)
            saved[0] += t.untyped_storage().nbytes()
        return t

    rss_before = rss_gb()
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        log_vars = model.train_step({task: batch}, wrapper)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return dict(config=config, task=task, input_hw=list(hw), step_s=round(seconds, 2), step_cpu_s=round(cpu_seconds, 1),
                rss_before_step_gb=round(rss_before, 3),
                peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3),
                saved_activations_gb=round(saved[0] / GB, 3),
                loss=float(log_vars[f'{task}.loss']), threads=threads)


# ---------------------------------------------------------------------------- the parent
def model_facts(config: str) -> dict:
    """Parameter counts (built without weights) and what the memory estimate needs."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    import projects.allinone  # noqa: F401
    from projects.allinone.registry import MODELS
    DefaultScope.get_instance('bench_competition_facts', scope_name='mmdet')
    cfg = Config.fromfile(osp.join(REPO, 'configs', config))
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)  # not initialised: only the counts are read
    n = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
    ema = [h for h in cfg.get('custom_hooks', []) if h.get('type') == 'EMAHook']
    return dict(
        params_total=n(model.parameters()), params_trainable=n(p for p in model.parameters() if p.requires_grad),
        params_shared=n(p for _, p in model.shared_parameters()),
        params_task={t: n(p for _, p in model.task_parameters(t)) for t in model.task_names},
        buffers=sum(b.numel() for b in model.buffers()),
        per_gpu_batch={t: cfg.train_dataloader[t].batch_size for t in model.task_names},
        ema=bool(ema), amp_in_config='Amp' in str(cfg.optim_wrapper.get('type', '')))


def estimate(facts: dict, steps: dict) -> dict:
    static = (facts['params_trainable'] * 16 + (facts['params_total'] - facts['params_trainable']) * 4
              + facts['params_shared'] * 4 + (facts['params_total'] * 4 + facts['buffers'] * 4 if facts['ema'] else 0))
    acts = {t: steps[t]['saved_activations_gb'] * GB * facts['per_gpu_batch'][t]
            for t in steps if 'saved_activations_gb' in steps[t]}
    out = dict(static_gb=round(static / GB, 2), activations_gb={t: round(a / GB, 2) for t, a in acts.items()})
    if len(acts) == len(facts['per_gpu_batch']):
        out['est_fp32_gb'] = round((static + max(acts.values())) / GB, 1)
        out['est_amp_gb'] = round((static + 0.5 * max(acts.values())) / GB, 1)
    return out


def run_child(config, task, args) -> dict:
    cmd = [sys.executable, osp.abspath(__file__), '--child', config, task, '--scale', str(args.scale),
           '--threads', str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    watch = dict(peak_rss=0.0, stopped=None)

    def watcher():
        while proc.poll() is None:
            watch['peak_rss'] = max(watch['peak_rss'], rss_gb(proc.pid))
            if mem_available_gb() < args.stop_below_gb:
                watch['stopped'] = f'stopped: less than {args.stop_below_gb} GB left at {watch["peak_rss"]:.1f} GB RSS'
                proc.kill()
            time.sleep(1.0)

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    out, err = proc.communicate(timeout=args.timeout)
    thread.join()
    lines = [ln for ln in out.splitlines() if ln.startswith('{"config"')]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    why = watch['stopped'] or f'exit {proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else ""}'
    return dict(config=config, task=task, failed=why, watched_peak_rss_gb=round(watch['peak_rss'], 2))


def table(results: dict) -> str:
    rows = ['| config | params (shared / det / seg / cls) | task | input | CPU step, batch 1 | peak RSS '
            '(before step) | activations, batch 1 | per-GPU batch | est. per-GPU memory fp32 / AMP |',
            '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for config, r in results.items():
        f, est = r['facts'], r['estimate']
        p = f['params_task']
        params = (f"{f['params_total'] / 1e6:.1f} M ({f['params_shared'] / 1e6:.1f} / "
                  + ' / '.join(f"{p.get(t, 0) / 1e6:.1f}" for t in TASKS) + ')')
        for i, t in enumerate(TASKS):
            s = r['steps'].get(t)
            if s is None:
                continue
            first = i == 0
            if 'failed' in s:
                measured = f"not measured ({s['failed']})", '', ''
            else:
                measured = (f"{s['step_s']:.1f} s", f"{s['peak_rss_gb']:.1f} GB ({s['rss_before_step_gb']:.1f} GB)",
                            f"{s['saved_activations_gb']:.2f} GB")
            gpu = (f"{est.get('est_fp32_gb', '-')} / {est.get('est_amp_gb', '-')} GB" if first else '')
            hw = 'x'.join(map(str, s.get('input_hw', []))) or '-'
            rows.append(f"| {config if first else ''} | {params if first else ''} | {t} | {hw} | {measured[0]} | "
                        f"{measured[1]} | {measured[2]} | {f['per_gpu_batch'].get(t, '-')} | {gpu} |")
    return '\n'.join(rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--configs', nargs='+', default=CONFIGS)
    p.add_argument('--tasks', nargs='+', default=list(TASKS), choices=TASKS)
    p.add_argument('--scale', type=float, default=1.0, help='input size factor (1.0 = the config\'s full size)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--min-free-gb', type=float, default=20.0,
                   help='wait (up to --wait-s) until this much memory is available before each task')
    p.add_argument('--wait-s', type=float, default=1800)
    p.add_argument('--stop-below-gb', type=float, default=1.5)
    p.add_argument('--timeout', type=float, default=3600)
    p.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'results', 'competition.json'))
    p.add_argument('--child', nargs=2, metavar=('CONFIG', 'TASK'), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.scale, args.threads)), flush=True)
        return None
    from projects.allinone.benchmarking.demo import cpu_machine, write_result
    results = {}
    for config in args.configs:
        facts = model_facts(config)
        steps = {}
        for task in args.tasks:
            waited = 0.0
            while mem_available_gb() < args.min_free_gb and waited < args.wait_s:
                time.sleep(30)
                waited += 30
            if mem_available_gb() < args.min_free_gb:
                steps[task] = dict(config=config, task=task, failed=f'less than {args.min_free_gb} GB available')
                continue
            print(f'{config} {task}: measuring ({mem_available_gb():.1f} GB available)', file=sys.stderr, flush=True)
            steps[task] = run_child(config, task, args)
            print(f'  {steps[task]}', file=sys.stderr, flush=True)
        results[config] = dict(facts=facts, steps=steps, estimate=estimate(facts, steps))
    res = dict(machine=cpu_machine(threads=args.threads), scale=args.scale, results=results,
               date=time.strftime('%Y-%m-%d'))
    write_result(res, args.out)
    print(table(results))
    return res


if __name__ == '__main__':
    main()
