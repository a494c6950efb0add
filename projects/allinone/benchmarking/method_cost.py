"""The per-step cost of multi-task methods against the vanilla joint step, on the demo model: the library of
``benchmarks/bench_methods.py`` and of ``tools/compare_methods.py``'s cost columns.

Every method runs through ``MultiTaskOptimWrapper`` on its own copy of the demo model with the same real
demo batches; the arms are interleaved step by step in one process, so machine noise hits them alike,
and the median of the per-step ratios to the joint step (mmengine's ``OptimWrapper``: one backward of the
summed loss, global clip) is reported. Memory: each method alone in a fresh process
(``python -m projects.allinone.benchmarking.method_cost --arm METHOD``), peak of the profiler's
tensor-memory timeline over one step after two warm-up steps.
"""
import argparse
import copy
import json
import statistics
import subprocess
import sys
import time

from .demo import build, cpu_machine, peak_step_memory_mb, step

DEFAULT_METHODS = ('vanilla', 'tbgc', 'maxgnr', 'pcgrad', 'cagrad', 'mgda', 'nashmtl', 'imtl', 'gradvac',
                   'aligned', 'uw', 'dwa', 'gradnorm', 'rlw', 'famo', 'tbgc+pcgrad')
CLIP = dict(max_norm=10.0)  # the demo config's global clip


def make_wrapper(method, model):
    import torch
    from mmengine.optim import OptimWrapper

    from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper
    from projects.allinone.methods import method_optim_overrides
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if method == 'joint':
        return OptimWrapper(opt, clip_grad=CLIP)
    over = method_optim_overrides(method)
    return MultiTaskOptimWrapper(opt, aggregator=over['aggregator'], clip_grad=over.get('clip_grad', CLIP),
                                 stats_interval=0)


def model_overrides(method, context):
    """The ``model`` overrides of a method (``None``: the plain demo model)."""
    from projects.allinone.methods import method_config_overrides
    if method == 'joint':
        return None
    return method_config_overrides(method, **(context or {})).get('model')


def build_models(args, arms):
    """``({arm: model}, batch)``: one model per arm, built with the arm's model overrides (same seed)."""
    model, batch = build(args.data)
    models = {}
    for a in arms:
        over = model_overrides(a, args.context)
        models[a] = copy.deepcopy(model) if not over else build(args.data, over, batches=False)[0]
    return models, batch, model


def quartiles(values):
    """First quartile, median, third quartile (the spread of the per-step ratios)."""
    return statistics.quantiles(values, n=4) if len(values) > 1 else list(values) * 3


def interleaved_speed(models, wrappers, batch, steps, warmup=2, baseline='joint'):
    """Time one step of every arm, the arms interleaved step by step (order reversed every other step) so
    machine noise hits them alike; per arm the median wall and process-CPU step time and the median (and
    quartiles) of the per-step ratios to ``baseline``'s step. The global RNG is reseeded before each step,
    so arms that draw from it (RLW, PCGrad's order) see the same numbers."""
    import torch
    arms = tuple(models)
    times = {a: [] for a in arms}
    cpu = {a: [] for a in arms}   # process CPU time: what the step cost, whatever else shares the machine
    for i in range(warmup + steps):
        for a in (arms if i % 2 == 0 else arms[::-1]):
            torch.manual_seed(i)
            t0, c0 = time.perf_counter(), time.process_time()
            step(models[a], wrappers[a], batch)
            if i >= warmup:
                times[a].append(time.perf_counter() - t0)
                cpu[a].append(time.process_time() - c0)
    out = {}
    for a in arms:
        ratios = [t / v for t, v in zip(times[a], times[baseline])]
        cpu_ratios = [t / v for t, v in zip(cpu[a], cpu[baseline])]
        out[a] = {'median_s': statistics.median(times[a]), f'ratio_to_{baseline}': statistics.median(ratios),
                  'ratio_quartiles': quartiles(ratios), 'median_cpu_s': statistics.median(cpu[a]),
                  f'cpu_ratio_to_{baseline}': statistics.median(cpu_ratios),
                  'cpu_ratio_quartiles': quartiles(cpu_ratios)}
    return out


def peak_mb_in_fresh_process(argv):
    """Run ``argv`` (a command that prints ``{"peak_mb": ...}`` as its last line) in a fresh process: the
    peak of one arm's step memory, unaffected by what the other arms allocated."""
    out = subprocess.check_output(argv, stderr=subprocess.DEVNULL)
    return json.loads(out.decode().strip().splitlines()[-1])['peak_mb']


def run_speed(args, methods):
    import torch
    torch.set_num_threads(args.threads)
    arms = ('joint', ) + tuple(methods)
    models, batch, model = build_models(args, arms)
    wrappers = {a: make_wrapper(a, models[a]) for a in arms}
    out = interleaved_speed(models, wrappers, batch, args.steps, args.warmup, baseline='joint')
    shared = sum(p.numel() for _, p in model.shared_parameters())
    return out, shared


def run_memory_arm(args):
    import torch
    torch.set_num_threads(args.threads)
    model, batch = build(args.data, model_overrides(args.arm, args.context))
    print(json.dumps(dict(peak_mb=peak_step_memory_mb(model, make_wrapper(args.arm, model), batch))))


def measure(methods, data, steps=10, warmup=2, threads=2, memory=True, context=None):
    """Speed (interleaved, one process) and memory (one process per method) of ``methods``.

    ``context``: what model-side methods need (``recon_report=PATH``). Methods with their own
    training loop are left out (``skipped``: method -> reason)."""
    from projects.allinone.methods import changes_train_loop
    context = {k: v for k, v in (context or {}).items() if v is not None}
    skipped = {m: 'own training loop (train_cfg type): not one optim-wrapper step'
               for m in methods if changes_train_loop(m)}
    methods = [m for m in methods if m not in skipped]
    args = argparse.Namespace(data=data, steps=steps, warmup=warmup, threads=threads, context=context)
    speed, n_shared = run_speed(args, methods)
    mem = {}
    if memory:
        for a in ('joint', ) + tuple(methods):
            mem[a] = peak_mb_in_fresh_process([sys.executable, '-m', __name__, '--arm', a, '--data', data,
                                               '--threads', str(threads), '--context', json.dumps(context)])
    return dict(speed=speed, peak_tensor_mb=mem, shared_params=n_shared, steps=steps, skipped=skipped,
                context=context, machine=cpu_machine(threads=threads))


def table(res, methods):
    lines = ['| method | median step (s) | step / joint | extra time vs vanilla | CPU time / joint '
             '| extra CPU vs vanilla | peak tensor memory (MB) |',
             '|---|---|---|---|---|---|---|']
    base = res['speed'].get('vanilla', res['speed']['joint'])['ratio_to_joint']
    cpu_base = res['speed'].get('vanilla', res['speed']['joint'])['cpu_ratio_to_joint']
    for a in ('joint', ) + tuple(methods):
        if a not in res['speed']:
            lines.append(f"| {a} | - | - | - | - | - | - |")
            continue
        s = res['speed'][a]
        mem = res['peak_tensor_mb'].get(a)
        lines.append(f"| {a} | {s['median_s']:.3f} | {s['ratio_to_joint']:.3f} | "
                     f"{100 * (s['ratio_to_joint'] / base - 1):+.1f}% | {s['cpu_ratio_to_joint']:.3f} | "
                     f"{100 * (s['cpu_ratio_to_joint'] / cpu_base - 1):+.1f}% | "
                     f"{'-' if mem is None else f'{mem:.1f}'} |")
    return '\n'.join(lines)


def main():
    """One memory arm in a fresh process (what ``measure`` starts)."""
    p = argparse.ArgumentParser(description='peak tensor memory of one method step (internal)')
    p.add_argument('--arm', required=True)
    p.add_argument('--data', required=True)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--context', type=json.loads, default={})
    run_memory_arm(p.parse_args())


if __name__ == '__main__':
    main()
