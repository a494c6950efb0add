"""Data-parallel training: exact per-task statistics across ranks (all-reduces overlapped with the
backward), approximate mode, AMP under the wrapper, identical replicas under every registered
aggregator, a task missing on one rank, distributed validation / submission, kill-and-resume, a
failing rank and a clean exit.

The equivalence tests run 2 gloo processes (torch.multiprocessing) on a tiny real AllInOneModel
(GroupNorm ResNet + mmseg FCN head + mmpretrain linear heads, no BatchNorm, no dropout) through the
real wrapper and optim wrapper; the reference is one process with the global batch. The fault tests
launch ``tools/dist_train.sh`` (torchrun, 2 CPU processes) on the demo config.
"""
import copy
import glob
import json
import math
import os
import os.path as osp
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager

import pytest
import torch

import projects.allinone  # noqa: F401  (registers the aggregators the replica test iterates over)
from projects.allinone.registry import AGGREGATORS

from conftest import DEMO_CFG, REPO

WORLD, B, STEPS = 2, 3, 3
TBGC_MAX_NORM = 0.01  # binds for the cls task (norm ~0.03-0.06), not for seg (~0.002-0.004)

TINY = dict(
    type='AllInOneModel',
    backbone=dict(type='ResNet', depth=18, base_channels=4, num_stages=2, out_indices=(0, 1), strides=(1, 2),
                  dilations=(1, 1), norm_cfg=dict(type='GN', num_groups=2), norm_eval=False),
    tasks=dict(
        seg=dict(_scope_='mmseg', type='EncoderDecoder',
                 data_preprocessor=dict(type='SegDataPreProcessor', mean=[128.] * 3, std=[64.] * 3, pad_val=0,
                                        seg_pad_val=255, size_divisor=32),
                 decode_head=dict(type='FCNHead', in_channels=4, in_index=0, channels=8, num_convs=1,
                                  concat_input=False, dropout_ratio=0, num_classes=3, norm_cfg=None,
                                  align_corners=False,
                                  loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
                 train_cfg=dict(), test_cfg=dict(mode='whole')),
        cls=dict(_scope_='mmpretrain', type='ImageClassifier',
                 data_preprocessor=dict(type='ClsDataPreprocessor', num_classes=3, mean=[128.] * 3, std=[64.] * 3),
                 neck=dict(type='GlobalAveragePooling'),
                 head=dict(type='LinearClsHead', num_classes=3, in_channels=8,
                           loss=dict(type='CrossEntropyLoss', loss_weight=1.0)))))

# arm -> (aggregator, wrapper mode, AMP)
ARMS = dict(
    sum=(dict(type='SumAggregator'), 'exact', False),
    tbgc=(dict(type='TBGCAggregator', max_norm=TBGC_MAX_NORM), 'exact', False),
    sum_approx=(dict(type='SumAggregator'), 'approximate', False),
    tbgc_approx=(dict(type='TBGCAggregator', max_norm=TBGC_MAX_NORM), 'approximate', False),
    tbgc_amp=(dict(type='TBGCAggregator', max_norm=TBGC_MAX_NORM), 'exact', True),
)
SMALL_BUCKETS = 'tbgc'  # this arm all-reduces in 2 KB buckets (many per task, launched during the backward)


# ---------------------------------------------------------------------------------------- tiny setup
def _scope():
    from mmengine.registry import DefaultScope
    if DefaultScope.get_current_instance() is None:
        DefaultScope.get_instance('allinone-dist-tests', scope_name='mmdet')


def build_tiny(tasks=('seg', 'cls'), seed=0):
    """The tiny model with ``tasks`` (``cls2``: a second classification task); ``seed=None`` leaves
    the global RNG alone (each rank then initialises differently, as in a run with diff_rank_seed)."""
    from projects.allinone.registry import MODELS
    _scope()
    if seed is not None:
        torch.manual_seed(seed)
    cfg = copy.deepcopy(TINY)
    if 'cls2' in tasks:
        cfg['tasks']['cls2'] = copy.deepcopy(cfg['tasks']['cls'])
    cfg['tasks'] = {t: cfg['tasks'][t] for t in tasks}
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def make_optim(arm, model):
    from projects.allinone.engine.optim_wrappers import MultiTaskAmpOptimWrapper, MultiTaskOptimWrapper
    agg, _, amp = ARMS[arm]
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    if amp:
        return MultiTaskAmpOptimWrapper(opt, aggregator=copy.deepcopy(agg), dtype='bfloat16', loss_scale=256.0)
    return MultiTaskOptimWrapper(opt, aggregator=copy.deepcopy(agg))


def global_batch(step, n, tasks=('seg', 'cls')):
    """``{task: batch}`` of ``n`` samples per task, the same in every process."""
    from mmengine.structures import PixelData
    from mmpretrain.structures import DataSample
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(1000 + step)
    seg_in = [torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8) for _ in range(n)]
    seg_ds = []
    for _ in range(n):
        s = SegDataSample(metainfo=dict(img_shape=(32, 32), ori_shape=(32, 32)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, 32, 32), generator=g))
        seg_ds.append(s)
    cls_in = [torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8) for _ in range(n)]
    labels = [int(torch.randint(0, 3, (1, ), generator=g)) for _ in range(n)]
    out = dict(seg=dict(inputs=seg_in, data_samples=seg_ds),
               cls=dict(inputs=cls_in, data_samples=[DataSample().set_gt_label(y) for y in labels]),
               # cls2: the same images, every label moved by one class: a task in conflict with cls
               cls2=dict(inputs=[x.clone() for x in cls_in],
                         data_samples=[DataSample().set_gt_label((y + 1) % 3) for y in labels]))
    return {t: out[t] for t in tasks}


def rank_share(batch, rank, b=B):
    """Rank r's part of the global batch: samples r*b .. r*b + b - 1 of every task."""
    part = slice(rank * b, (rank + 1) * b)
    return {t: dict(inputs=v['inputs'][part], data_samples=v['data_samples'][part]) for t, v in batch.items()}


def step_data(arm, step, rank=None):
    """The batch of ``step``: rank ``rank``'s share, or (None) what one process gets."""
    full = global_batch(step, WORLD * B)
    return full if rank is None else rank_share(full, rank)


def _worker(rank, init_file, out_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=WORLD)
    try:
        from projects.allinone.engine.model_wrappers import MultiTaskDistributedDataParallel
        for arm, (_, mode, _) in ARMS.items():
            model = build_tiny()
            ddp = MultiTaskDistributedDataParallel(model, mode=mode,
                                                   bucket_cap_mb=0.002 if arm == SMALL_BUCKETS else 25)
            ow = make_optim(arm, model)
            stats = []
            for step in range(STEPS):
                ddp.train_step(step_data(arm, step, rank), ow)
                stats.append(dict(ow.last_stats))
            torch.save(dict(params={n: p.detach().clone() for n, p in model.named_parameters()}, stats=stats,
                            counters=dict(ddp.grad_sync.counters)), osp.join(out_dir, f'{arm}_{rank}.pt'))
        # a loop that does not draw every task on every rank: rank 1 has no seg batch
        model = build_tiny()
        ddp = MultiTaskDistributedDataParallel(model)
        ow = make_optim('tbgc', model)
        data = step_data('tbgc', 0, rank)
        if rank == 1:
            del data['seg']
        try:
            ddp.train_step(data, ow)
            error = None
        except RuntimeError as e:
            error = str(e)
        ddp.train_step(step_data('tbgc', 1, rank), ow)  # the ranks still agree on their collectives
        torch.save(dict(error=error), osp.join(out_dir, f'missing_{rank}.pt'))
        # a method's own learnable state (DR-MGF's importances): averaged through the sync seam
        own = [torch.nn.Parameter(torch.zeros(3)) for _ in range(3)]
        own[0].grad = torch.tensor([1.0, 2.0, 3.0]) * (rank + 1)
        own[1].grad = torch.ones(3) * 4 if rank == 0 else None   # a gradient on one rank only
        ddp.grad_sync.average(own)                                # own[2]: on no rank
        torch.save(dict(grads=[None if q.grad is None else q.grad.clone() for q in own]),
                   osp.join(out_dir, f'average_{rank}.pt'))
    finally:
        dist.destroy_process_group()


def spawn(fn, args, timeout=300):
    import torch.multiprocessing as mp
    ctx = mp.start_processes(fn, args=args, nprocs=WORLD, join=False, start_method='spawn')
    deadline = time.time() + timeout
    while not ctx.join(timeout=max(1.0, deadline - time.time())):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError(f'the {WORLD} workers did not finish within {timeout} s (a hang?)')


@pytest.fixture(scope='module')
def dist_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp('dist_runs')
    spawn(_worker, (str(out / 'init'), str(out)))
    return {arm: [torch.load(out / f'{arm}_{r}.pt', weights_only=False) for r in range(WORLD)]
            for arm in list(ARMS) + ['missing', 'average']}


@contextmanager
def one_thread():
    """Small ops on a shared 2-core machine: a second OpenMP thread mostly waits for a busy core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@one_thread()
def reference(arm):
    """One process, the global batch (2B per task), the same optim wrapper."""
    model = build_tiny()
    ow = make_optim(arm, model)
    stats = []
    for step in range(STEPS):
        model.train_step(step_data(arm, step), ow)
        stats.append(dict(ow.last_stats))
    return {n: p.detach().clone() for n, p in model.named_parameters()}, stats


def assert_params_close(got, want, **tol):
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=k, **tol)


# ---------------------------------------------------------------------------------------- equivalence
@pytest.mark.slow
@pytest.mark.parametrize('arm', ['sum', 'tbgc'])
def test_exact_mode_equals_one_process_with_the_global_batch(registered, dist_runs, arm):
    r0, r1 = dist_runs[arm]
    for k in r0['params']:  # every rank applies the same update
        assert torch.equal(r0['params'][k], r1['params'][k]), k
    want, want_stats = reference(arm)
    assert_params_close(r0['params'], want, rtol=1e-5, atol=1e-6)
    for got, ref in zip(r0['stats'], want_stats):  # the aggregator saw the global norms
        for key in ('seg.grad_norm', 'cls.grad_norm', 'seg.weight', 'cls.weight'):
            assert got[key] == pytest.approx(ref[key], rel=1e-4), key
    if arm == 'tbgc':  # both regimes of the clip are exercised
        assert all(s['cls.weight'] < 1.0 and s['seg.weight'] == 1.0 for s in r0['stats'])


@pytest.mark.slow
def test_task_missing_on_one_rank_fails_on_every_rank_naming_it(registered, dist_runs):
    """Rank 1 has no seg batch at step 0: a collective inside seg's forward (SyncBN, reduce_mean)
    would hang, so the step fails at once on both ranks, naming the task and the rank."""
    for rank, r in enumerate(dist_runs['missing']):
        assert r['error'] is not None, rank
        assert "task 'seg' has no batch on rank(s) [1]" in r['error'] and f'this is rank {rank}' in r['error']


@pytest.mark.slow
def test_sync_seam_averages_a_methods_own_gradients_over_the_ranks(registered, dist_runs):
    """``GradSync.average`` (DR-MGF's importances and coefficients): the ranks' mean, a missing gradient
    counted as zero, none on any rank kept as None, the same on both ranks."""
    for r in range(WORLD):
        g = dist_runs['average'][r]['grads']
        torch.testing.assert_close(g[0], torch.tensor([1.5, 3.0, 4.5]), rtol=0, atol=0)
        torch.testing.assert_close(g[1], torch.full((3, ), 2.0), rtol=0, atol=0)
        assert g[2] is None


def test_exact_mode_all_reduces_start_during_the_backward(registered, dist_runs):
    """Small buckets: many per task, most launched by the post-accumulate-grad hooks before the
    backward ends; the update is still the one-process update (test above)."""
    c = dist_runs[SMALL_BUCKETS][0]['counters']
    assert c['allreduce_calls'] > 10 * STEPS
    assert c['allreduce_launched_in_backward'] > c['allreduce_calls'] / 2


@one_thread()
def _local_norms(step):
    """Per rank, each task's shared-gradient norm on its own share of the first batch."""
    model = build_tiny()
    shared = [p for _, p in model.shared_parameters()]
    out = {}
    for task in ('seg', 'cls'):
        norms = []
        for rank in range(WORLD):
            model.zero_grad(set_to_none=True)
            loss, _ = model.task_loss(task, step_data('sum', step, rank)[task])
            loss.backward()
            norms.append(math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in shared if p.grad is not None)))
        out[task] = norms
    return out


@pytest.mark.slow
def test_approximate_mode_differs_only_as_documented(registered, dist_runs):
    # Sum: factor 1 whatever the norms, so approximate == exact
    assert_params_close(dist_runs['sum_approx'][0]['params'], dist_runs['sum'][0]['params'], rtol=1e-5, atol=1e-6)
    approx, exact = dist_runs['tbgc_approx'][0], dist_runs['tbgc'][0]
    for k in approx['params']:
        assert torch.equal(approx['params'][k], dist_runs['tbgc_approx'][1]['params'][k]), k
    # step 0: exact sees ||mean_r g_r||, approximate sqrt(mean_r ||g_r||^2) (>= it), and TBGC's factor
    # follows the norm it saw
    local = _local_norms(0)
    for task in ('seg', 'cls'):
        rms = math.sqrt(sum(n * n for n in local[task]) / WORLD)
        assert approx['stats'][0][f'{task}.grad_norm'] == pytest.approx(rms, rel=1e-4)
        assert exact['stats'][0][f'{task}.grad_norm'] < rms
        for stats in (approx['stats'][0], exact['stats'][0]):
            factor = min(1.0, TBGC_MAX_NORM / (stats[f'{task}.grad_norm'] + 1e-6))
            assert stats[f'{task}.weight'] == pytest.approx(factor, rel=1e-5)
    # the clip binds for cls, so the updates differ ...
    assert not torch.allclose(approx['params']['backbone.conv1.weight'], exact['params']['backbone.conv1.weight'])
    # ... at less traffic: one all-reduce of every gradient per step instead of one per task
    assert approx['counters']['allreduce_bytes'] < exact['counters']['allreduce_bytes']


@pytest.mark.slow
def test_exact_mode_bytes_are_the_bucket_sizes(registered, dist_runs):
    """What the benchmark reports: per step, presence flags (rank x task) + per task (shared + own +
    flags + loss)."""
    model = build_tiny()
    part = model.parameter_partition()
    n = {g: sum(p.numel() for p in ps) for g, ps in part.items()}
    k = {g: len(ps) for g, ps in part.items()}
    tasks = list(model.task_names)
    presence = WORLD * len(tasks)  # which rank has which task
    exact = presence + sum(n['shared'] + n[t] + k['shared'] + k[t] + 1 for t in tasks)
    total_n, total_k = sum(n.values()), sum(k.values())
    approx_elems = presence + total_n + total_k  # float32 elements; plus 3 float64 per task
    assert dist_runs['sum'][0]['counters']['allreduce_bytes'] == STEPS * exact * 4
    assert dist_runs['sum_approx'][0]['counters']['allreduce_bytes'] == STEPS * (approx_elems * 4 + 3 * 8 * len(tasks))


@pytest.mark.slow
def test_amp_under_the_wrapper_clips_unscaled_global_gradients(registered, dist_runs):
    """bf16 autocast with a static loss scale of 256: gradients are all-reduced in the scaled space,
    the norms TBGC sees are unscaled and global (close to the fp32 ones), the update matches one
    process with AMP on the global batch to bf16 precision."""
    r0, r1 = dist_runs['tbgc_amp']
    for k in r0['params']:
        assert torch.equal(r0['params'][k], r1['params'][k]), k
    fp32 = dist_runs['tbgc'][0]
    for got, ref in zip(r0['stats'][:1], fp32['stats'][:1]):
        for task in ('seg', 'cls'):
            assert got[f'{task}.grad_norm'] == pytest.approx(ref[f'{task}.grad_norm'], rel=0.05)
    want, _ = reference('tbgc_amp')
    assert_params_close(r0['params'], want, rtol=2e-2, atol=2e-3)


# ---------------------------------------------------------------------------------------- identical replicas
#: constructor arguments of the aggregators that need some (each entry: one run); every other
#: registered aggregator runs with its defaults, so a method added later is covered without an edit
REPLICA_ARGS = {
    'ChainAggregator': [dict(steps=[dict(type='TBGCAggregator', max_norm=0.1), dict(type='PCGradAggregator')]),
                        dict(steps=[dict(type='RLWAggregator'), dict(type='GradVacAggregator')])],
    'MaxGNRAggregator': [dict(warmup=2, update_interval=1, sketch_dim=64)],  # solves within the steps run
    # two gradient samples: the batch of 2 per rank in two parts, each its own backward and all-reduce
    'SDMGradAggregator': [dict(samples=2)],
    'MoDoAggregator': [dict(samples=2, gamma=0.05)],
}
REPLICA_TASKS, REPLICA_STEPS, REPLICA_B = ('seg', 'cls', 'cls2'), 5, 2


def replica_runs():
    return [(f'{name}{i if i else ""}', dict(type=name, **kw))
            for name in sorted(AGGREGATORS.module_dict) for i, kw in enumerate(REPLICA_ARGS.get(name, [{}]))]


def _replica_worker(rank, init_file, out_dir):
    """Every registered aggregator, 3 tasks, randomness=dict(seed=0, diff_rank_seed=True): each rank's
    global RNGs (and so its initial weights) differ; the parameters must not."""
    import torch.distributed as dist
    from mmengine.runner import set_random_seed
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=WORLD)
    try:
        from projects.allinone.engine.model_wrappers import MultiTaskDistributedDataParallel
        from projects.allinone.engine.optim_wrappers import MultiTaskOptimWrapper
        set_random_seed(0, diff_rank_seed=True)
        out = dict(rng=torch.rand(4))
        for key, agg in replica_runs():
            for mode in ('exact', 'approximate'):
                model = build_tiny(REPLICA_TASKS, seed=None)
                ddp = MultiTaskDistributedDataParallel(model, mode=mode)
                ow = MultiTaskOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                           aggregator=copy.deepcopy(agg), stats_interval=2)
                weights = []
                for step in range(REPLICA_STEPS):
                    full = global_batch(100 + step, WORLD * REPLICA_B, REPLICA_TASKS)
                    ddp.train_step(rank_share(full, rank, REPLICA_B), ow)
                    weights.append([ow.last_stats[f'{t}.weight'] for t in REPLICA_TASKS])
                out[key, mode] = {n: p.detach().clone() for n, p in model.named_parameters()}
                out[key, mode, 'weights'] = weights
        torch.save(out, osp.join(out_dir, f'replicas_{rank}.pt'))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope='module')
def replica_runs_done(tmp_path_factory):
    out = tmp_path_factory.mktemp('replicas')
    spawn(_replica_worker, (str(out / 'init'), str(out)), timeout=600)
    return [torch.load(out / f'replicas_{r}.pt', weights_only=False) for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['exact', 'approximate'])
@pytest.mark.parametrize('key', [k for k, _ in replica_runs()])
def test_every_aggregator_keeps_the_replicas_identical(registered, replica_runs_done, key, mode):
    r0, r1 = replica_runs_done
    assert not torch.equal(r0['rng'], r1['rng'])  # the ranks' global RNGs really differ
    drift = max(float((r0[key, mode][n] - r1[key, mode][n]).abs().max()) for n in r0[key, mode])
    assert drift == 0.0, f'{key} ({mode}): the ranks\' parameters differ by up to {drift:.3g}'
    for n in r0[key, mode]:
        assert torch.equal(r0[key, mode][n], r1[key, mode][n]), n
    if mode == 'exact':  # the same averaged gradients in: the same task weights out, step by step
        assert r0[key, mode, 'weights'] == r1[key, mode, 'weights']


# ---------------------------------------------------------------------------------------- resume helpers
def test_truncated_checkpoint_is_named_and_the_previous_one_used(registered, tmp_path, capsys):
    from projects.allinone.engine.checkpoint import checkpoint_problem, find_resume_checkpoint
    from tools.train import resolve_resume
    for i in (2, 4):
        torch.save(dict(meta=dict(iter=i), state_dict={'w': torch.randn(1000)}), tmp_path / f'iter_{i}.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    assert find_resume_checkpoint(str(tmp_path)) == (str(tmp_path / 'iter_4.pth'), [])
    newest = tmp_path / 'iter_4.pth'
    data = newest.read_bytes()
    newest.write_bytes(data[:len(data) // 2])
    assert 'truncated' in checkpoint_problem(str(newest))
    path, broken = find_resume_checkpoint(str(tmp_path))
    assert path == str(tmp_path / 'iter_2.pth') and [b for b, _ in broken] == [str(newest)]
    assert resolve_resume('auto', str(tmp_path)) == str(tmp_path / 'iter_2.pth')
    err = capsys.readouterr().err
    assert f'skipping checkpoint {newest}' in err and 'truncated' in err and 'iter_2.pth' in err
    # a file written after the pointer (killed while being saved) is not a candidate
    (tmp_path / 'iter_6.pth').write_bytes(data[:100])
    assert find_resume_checkpoint(str(tmp_path))[0] == str(tmp_path / 'iter_2.pth')
    # an explicit --resume CKPT that is cut short is an error naming it
    with pytest.raises(SystemExit, match=r'--resume .*iter_4\.pth: cannot resume .*truncated'):
        resolve_resume(str(newest), str(tmp_path))
    # nothing whole at all
    (tmp_path / 'iter_2.pth').write_bytes(b'')
    with pytest.raises(SystemExit, match='no whole checkpoint'):
        resolve_resume('auto', str(tmp_path))


def test_launcher_setup_defaults_the_per_task_wrapper_and_refuses_plain_ddp(registered):
    from mmengine.config import Config

    from projects.allinone.utils.cli import enable_amp, setup_distributed
    cfg = Config(dict(launcher='mpi', optim_wrapper=dict(type='MultiTaskOptimWrapper'),
                      env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    setup_distributed(cfg)  # 'mpi': no process group is started here
    assert cfg.model_wrapper_cfg.type == 'MultiTaskDistributedDataParallel'
    assert cfg.env_cfg.dist_cfg.backend == ('nccl' if torch.cuda.is_available() else 'gloo')
    cfg = Config(dict(launcher='mpi', optim_wrapper=dict(type='MultiTaskOptimWrapper'),
                      model_wrapper_cfg=dict(type='MMDistributedDataParallel')))
    with pytest.raises(SystemExit, match='MultiTaskDistributedDataParallel'):
        setup_distributed(cfg)
    demo = Config.fromfile(DEMO_CFG)
    assert demo.model_wrapper_cfg.type == 'MultiTaskDistributedDataParallel'
    assert demo.default_hooks.checkpoint.max_keep_ckpts >= 2
    enable_amp(demo)
    assert demo.optim_wrapper.type == 'MultiTaskAmpOptimWrapper'
    if not torch.cuda.is_available():  # CPU: bf16 without loss scaling
        assert demo.optim_wrapper.dtype == 'bfloat16' and demo.optim_wrapper.loss_scale == dict(enabled=False)


# ---------------------------------------------------------------------------------------- torchrun runs
@pytest.mark.parametrize('script', ['dist_train.sh', 'dist_test.sh'])
def test_single_node_launch_picks_a_free_port_unless_port_is_given(script):
    """torchrun's standalone rendezvous on one node (two jobs side by side never collide, as the two
    concurrent jobs of the kill test below); PORT (or several nodes) selects the static rendezvous."""
    args = ['CONFIG', '2'] if script == 'dist_train.sh' else ['CONFIG', 'CKPT', '2']

    def argv(**env):
        env = dict({k: v for k, v in os.environ.items() if k not in ('PORT', 'NNODES')}, PYTHON='echo', **env)
        return subprocess.run(['bash', osp.join(REPO, 'tools', script), *args], env=env, capture_output=True,
                              text=True, check=True).stdout.split()

    single = argv()
    assert '--standalone' in single and not any(a.startswith('--master_port') for a in single)
    assert single[-2:] == ['--launcher', 'pytorch']
    assert '--master_port=29501' in argv(PORT='29501') and '--standalone' not in argv(PORT='29501')
    multi = argv(NNODES='2', NODE_RANK='1', MASTER_ADDR='10.0.0.1')
    assert {'--nnodes=2', '--node_rank=1', '--master_addr=10.0.0.1', '--master_port=29500'} <= set(multi)



def write_config(path, data, extra=''):
    """The demo config on the small data: 2 processes x batch 1 per task, 3 iterations, a checkpoint
    after each, validation at the end on an odd number of detection images (the sampler pads one),
    deterministic. No visualizer backends: each dumps the config (seconds of yapf per dump)."""
    text = f'''_base_ = [{DEMO_CFG!r}]
train_dataloader = dict(det=dict(batch_size=1, dataset=dict(data_root='{data}/dec/')),
                        seg=dict(batch_size=1, dataset=dict(data_root='{data}/seg/')),
                        cls=dict(batch_size=1, dataset=dict(data_root='{data}/cls/')))
# val batch 1: one process and two compute each image alike (no batch padding)
val_dataloader = dict(det=dict(batch_size=1, dataset=dict(data_root='{data}/dec/', indices=5)),
                      seg=dict(batch_size=1, dataset=dict(data_root='{data}/seg/')),
                      cls=dict(batch_size=1, dataset=dict(data_root='{data}/cls/')))
val_evaluator = dict(det=dict(ann_file='{data}/dec/val.json'))
test_dataloader, test_evaluator = val_dataloader, val_evaluator
model = dict(tasks=dict(det=dict(test_cfg=dict(score_thr=0.0))))  # every image has detections to export
train_cfg = dict(max_iters=3, val_interval=3)
default_hooks = dict(checkpoint=dict(interval=1), logger=dict(interval=1))
randomness = dict(seed=0, deterministic=True)
visualizer = dict(vis_backends=None)
''' + extra
    with open(path, 'w') as f:
        f.write(text)
    return str(path)


def launch(config, work, extra=(), env=None, log=None):
    cmd = ['bash', osp.join(REPO, 'tools', 'dist_train.sh'), str(config), str(WORLD), '--work-dir', str(work),
           *extra]
    env = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
    env.pop('PORT', None)  # one node: tools/dist_train.sh lets torchrun pick a free port
    out = open(log or f'{work}.log', 'w')
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)


def finish(proc, timeout, what):
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f'{what} did not end within {timeout} s')
    return rc


def read_log(proc):
    with open(proc.args[proc.args.index('--work-dir') + 1] + '.log') as f:
        return f.read()


def children(pid):
    out = []
    for stat in glob.glob('/proc/[0-9]*/stat'):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.split('/')[2]))
    return out


def alive(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def state_dict(path):
    return torch.load(path, map_location='cpu', weights_only=True)['state_dict']


@pytest.mark.slow
def test_kill_resume_and_distributed_validation(registered, demo_data, tmp_path):
    """Three 2-process runs with the same seed: uninterrupted; killed (SIGKILL to the launcher's
    process group) after its 2nd checkpoint, whose file is then cut in half; resumed with --resume,
    which names the broken file, takes the previous checkpoint and reaches the same parameters.
    The uninterrupted run's validation (gathered from both ranks) equals one process's."""
    full_dir, cut_dir = tmp_path / 'full', tmp_path / 'cut'
    config = write_config(tmp_path / 'small.py', demo_data)
    full = launch(config, full_dir, extra=['--cfg-options', f"val_cfg.submission.out={tmp_path / 'sub_dist.json'}",
                                           'val_cfg.submission.keys.det=dec'])
    # every checkpoint kept: on a loaded machine the kill may land while iteration 3 is saved, after
    # the default max_keep_ckpts=2 has already removed iter_1.pth (the fallback is then iter_2.pth)
    keep_all = ['--cfg-options', 'default_hooks.checkpoint.max_keep_ckpts=-1']
    cut = launch(config, cut_dir, extra=keep_all)
    pointer = cut_dir / 'last_checkpoint'
    deadline = time.time() + 240
    while time.time() < deadline and cut.poll() is None:
        if pointer.exists() and pointer.read_text().strip().endswith('iter_2.pth'):
            break
        time.sleep(0.05)
    assert cut.poll() is None, f'the run to kill ended on its own:\n{read_log(cut)[-3000:]}'
    workers = children(cut.pid)
    assert len(workers) == WORLD, workers
    os.killpg(cut.pid, signal.SIGKILL)
    assert cut.wait(timeout=30) == -signal.SIGKILL
    # torchrun puts its workers in sessions of their own; they notice the launcher is gone and exit
    deadline = time.time() + 30
    while time.time() < deadline and any(alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(alive(w) for w in workers), 'workers outlived their killed launcher'
    newest = pointer.read_text().strip()
    n = int(osp.basename(newest)[len('iter_'):-len('.pth')])  # 2, or 3 if the kill came that late
    assert n in (2, 3) and not (cut_dir / f'iter_{n + 1}.pth').exists()
    data = open(newest, 'rb').read()
    with open(newest, 'wb') as f:  # as if the kill had landed while this file was written
        f.write(data[:len(data) // 2])

    assert finish(full, 300, 'the uninterrupted run') == 0, read_log(full)[-3000:]
    resumed = launch(config, cut_dir, extra=['--resume', *keep_all], log=f'{cut_dir}_resumed.log')
    # meanwhile, one process tests the uninterrupted run's final weights (the reference below)
    one = subprocess.Popen([sys.executable, osp.join(REPO, 'tools', 'test.py'), config, str(full_dir / 'iter_3.pth'),
                            '--work-dir', str(tmp_path / 'one'), '--submit', str(tmp_path / 'sub_one.json')],
                           stdout=open(tmp_path / 'one.log', 'w'), stderr=subprocess.STDOUT, cwd=REPO,
                           env=dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1'), start_new_session=True)
    rc = finish(resumed, 240, 'the resumed run')
    with open(f'{cut_dir}_resumed.log') as f:
        log = f.read()
    assert rc == 0, log[-3000:]
    assert f'skipping checkpoint {newest}' in log and 'truncated' in log
    assert 'previous whole checkpoint' in log and f'iter_{n - 1}.pth' in log
    # resumed at iteration n - 1: its next iteration is n, the ones before are not run again
    assert f'Iter(train) [{n}/3]' in log and f'Iter(train) [{n - 1}/3]' not in log
    want, got = state_dict(full_dir / 'iter_3.pth'), state_dict(cut_dir / 'iter_3.pth')
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)

    # ---- validation across ranks: same metrics and submission as one process on the same weights
    assert finish(one, 240, 'the one-process test') == 0, (tmp_path / 'one.log').read_text()[-3000:]
    ref = json.load(open(tmp_path / 'one' / 'leaderboard_test.json'))
    board = json.load(open(full_dir / 'leaderboard.json'))
    for key in ('cls/accuracy/top1', 'seg/mIoU', 'leaderboard/A'):
        assert board[key] == pytest.approx(ref[key], abs=1e-4), key
    assert board.get('det/coco/bbox_mAP_50', 0.0) == pytest.approx(ref.get('det/coco/bbox_mAP_50', 0.0), abs=1e-3)
    dist_sub, one_sub = json.load(open(tmp_path / 'sub_dist.json')), json.load(open(tmp_path / 'sub_one.json'))
    n_cls = len(open(osp.join(demo_data, 'cls', 'val.txt')).read().split()) // 2
    assert n_cls % 2 == 1 and len(dist_sub['cls']) == n_cls and dist_sub['cls'] == one_sub['cls']
    assert list(dist_sub['seg']) == list(one_sub['seg'])
    # as many detections per image as one process: none missing, the padded image's not exported twice
    # (not the same list: at score_thr 0 the untrained detector's top-100 cut falls among ~1e-7 ties,
    # which the processes' different thread counts break differently)
    per_image = lambda sub: Counter(d['image_id'] for d in sub['dec'])  # noqa: E731
    assert per_image(dist_sub) == per_image(one_sub) and len(dist_sub['dec']) > 0


FAULT = '''
# imported by the job (custom_imports): rank 1 raises in the wrapper's train_step at iteration 2
import torch.distributed as dist

from projects.allinone.engine.model_wrappers import MultiTaskDistributedDataParallel

_train_step, _calls = MultiTaskDistributedDataParallel.train_step, [0]


def train_step(self, data, optim_wrapper):
    _calls[0] += 1
    if dist.get_rank() == 1 and _calls[0] == 2:
        raise RuntimeError('injected failure on rank 1 at iteration 2')
    return _train_step(self, data, optim_wrapper)


MultiTaskDistributedDataParallel.train_step = train_step
'''


@pytest.mark.slow
def test_a_failing_rank_brings_the_job_down(demo_data, tmp_path):
    (tmp_path / 'fault_inject.py').write_text(FAULT)
    # custom_imports act when the config file is read
    config = write_config(tmp_path / 'fault.py', demo_data, extra="custom_imports = dict(imports=['projects.allinone', "
                                                                  "'fault_inject'])\ntrain_cfg = dict(max_iters=20)\n")
    t0 = time.time()
    proc = launch(config, tmp_path / 'work', extra=['--no-validate'], env=dict(PYTHONPATH=str(tmp_path)))
    rc = finish(proc, 180, 'the job with a failing rank')
    log = read_log(proc)
    assert rc != 0
    assert 'RuntimeError: injected failure on rank 1 at iteration 2' in log
    assert 'Iter(train) [20/20]' not in log
    print(f'job down {time.time() - t0:.0f} s after launch')
