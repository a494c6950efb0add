"""The per-task gradient optim wrapper and TBGC, checked against hand computations."""
import math
import warnings

import pytest
import torch
from torch import nn

from projects.allinone.engine.aggregators import SumAggregator, TBGCAggregator
from projects.allinone.engine.optim_wrappers import MultiTaskAmpOptimWrapper, MultiTaskOptimWrapper

EPS = 1e-6


class TinyMTL(nn.Module):
    """A shared trunk and two task heads; each task has its own inputs (as in AllInOne)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.shared = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8))
        self.heads = nn.ModuleDict(dict(a=nn.Linear(8, 1), b=nn.Linear(8, 3)))

    def partition(self):
        return dict(shared=list(self.shared.parameters()), a=list(self.heads['a'].parameters()),
                    b=list(self.heads['b'].parameters()))

    def loss(self, task, x, scale=1.0):
        out = self.heads[task](self.shared(x))
        return (out ** 2).mean() * scale


def batches(seed=1, n=2):
    g = torch.Generator().manual_seed(seed)
    return [dict(a=torch.randn(5, 4, generator=g) * 3, b=torch.randn(6, 4, generator=g)) for _ in range(n)]


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def hand_aggregate(model, batch, factor_fn, scales=None, autocast=False):
    """Reference: per task, backward alone, factor from its shared norm, weighted sum."""
    shared = list(model.shared.parameters())
    acc = {p: torch.zeros_like(p) for p in model.parameters()}
    for task, x in batch.items():
        model.zero_grad(set_to_none=True)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            loss = model.loss(task, x, (scales or {}).get(task, 1.0))
        loss.backward()
        norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in shared))
        c = factor_fn(norm)
        for p in shared + list(model.heads[task].parameters()):
            acc[p] += c * p.grad
    model.zero_grad(set_to_none=True)
    return [acc[p] for p in model.parameters()]


def run_wrapper(model, wrapper, batch, scales=None):
    if not wrapper.is_bound:
        wrapper.bind(model.partition())
    with wrapper.optim_context(model):
        for task, x in batch.items():
            wrapper.backward_task(task, model.loss(task, x, (scales or {}).get(task, 1.0)))
    wrapper.update_tasks()


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=1.0)


def assert_step_equals(model, before, acc):
    """SGD with lr 1: the parameter change is minus the combined gradient."""
    for p, p0, a in zip(model.parameters(), before, acc):
        torch.testing.assert_close(p.detach(), p0 - a, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize('streaming', [True, False])
def test_tbgc_matches_hand_computation(streaming):
    ref, model = TinyMTL(), TinyMTL()
    batch = batches()[0]
    acc = hand_aggregate(ref, batch, lambda n: min(1.0, 0.1 / (n + EPS)))
    before = params_of(model)
    wrapper = MultiTaskOptimWrapper(sgd(model), aggregator=dict(type='TBGCAggregator', max_norm=0.1),
                                    streaming=streaming)
    run_wrapper(model, wrapper, batch)
    assert_step_equals(model, before, acc)
    # the clip binds for both tasks here, so both reach the shared parameters with norm 0.1
    for t in 'ab':
        assert wrapper.last_stats[f'{t}.grad_norm'] > 0.1
        assert wrapper.last_stats[f'{t}.grad_norm_agg'] == pytest.approx(0.1, rel=1e-4)


def test_tbgc_does_not_clip_small_gradients():
    ref, model = TinyMTL(), TinyMTL()
    batch = batches()[0]
    acc = hand_aggregate(ref, batch, lambda n: min(1.0, 1e3 / (n + EPS)))
    before = params_of(model)
    run_wrapper(model, MultiTaskOptimWrapper(sgd(model), aggregator=TBGCAggregator(max_norm=1e3)), batch)
    assert_step_equals(model, before, acc)  # factor 1: the plain sum


def test_tbgc_amp_clips_unscaled_gradients():
    """Loss scale 2**14 makes the scaled norm exceed max_norm; the unscaled one does not."""
    ref, model = TinyMTL(), TinyMTL()
    batch = batches()[0]
    max_norm = 5.0
    acc = hand_aggregate(ref, batch, lambda n: min(1.0, max_norm / (n + EPS)), autocast=True)
    before = params_of(model)
    wrapper = MultiTaskAmpOptimWrapper(sgd(model), aggregator=TBGCAggregator(max_norm=max_norm),
                                       loss_scale=2.0 ** 14, dtype='bfloat16')
    run_wrapper(model, wrapper, batch)
    assert_step_equals(model, before, acc)
    assert all(wrapper.last_stats[f'{t}.grad_norm'] < max_norm for t in 'ab')


def test_tbgc_amp_with_binding_clip_matches_hand():
    ref, model = TinyMTL(), TinyMTL()
    batch = batches()[0]
    acc = hand_aggregate(ref, batch, lambda n: min(1.0, 0.1 / (n + EPS)), autocast=True)
    before = params_of(model)
    wrapper = MultiTaskAmpOptimWrapper(sgd(model), aggregator=TBGCAggregator(max_norm=0.1),
                                       loss_scale=1024.0, dtype='bfloat16', streaming=False)
    run_wrapper(model, wrapper, batch)
    assert_step_equals(model, before, acc)


def test_vanilla_equals_joint_backward_with_global_clip():
    """SumAggregator + clip_grad is exactly mmengine's OptimWrapper on the summed loss."""
    from mmengine.optim import OptimWrapper
    ref, model = TinyMTL(), TinyMTL()
    batch = batches()[0]
    ow = OptimWrapper(sgd(ref), clip_grad=dict(max_norm=0.5))
    ow.update_params(sum(ref.loss(t, x) for t, x in batch.items()))
    wrapper = MultiTaskOptimWrapper(sgd(model), aggregator=dict(type='SumAggregator'), clip_grad=dict(max_norm=0.5))
    run_wrapper(model, wrapper, batch)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_nonfinite_task_is_skipped_and_others_update():
    ref, model = TinyMTL(), TinyMTL()
    batch = batches()[0]
    # reference: task a alone
    acc = hand_aggregate(ref, dict(a=batch['a']), lambda n: min(1.0, 0.1 / (n + EPS)))
    before = params_of(model)
    wrapper = MultiTaskOptimWrapper(sgd(model), aggregator=TBGCAggregator(max_norm=0.1))
    run_wrapper(model, wrapper, batch, scales=dict(b=float('nan')))
    assert wrapper.skipped['b'] == 1
    assert_step_equals(model, before, acc)
    for p in model.parameters():
        assert torch.isfinite(p).all()
    head_b_before = before[-2:]
    for p, p0 in zip(model.heads['b'].parameters(), head_b_before):
        assert torch.equal(p, p0)  # the skipped task's head is untouched


def test_all_tasks_nonfinite_skips_the_step():
    model = TinyMTL()
    before = params_of(model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    wrapper = MultiTaskOptimWrapper(opt, aggregator=TBGCAggregator())
    run_wrapper(model, wrapper, batches()[0], scales=dict(a=float('inf'), b=float('nan')))
    for p, p0 in zip(model.parameters(), before):
        assert torch.equal(p, p0)  # not even AdamW's weight decay moved anything
    assert not opt.state  # no step taken


def gradscaler_scales(steps, overflow_steps, **scaler_kw):
    """torch's GradScaler alone: one parameter, its gradient inf on the overflow steps (1-based)."""
    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler('cpu', **scaler_kw)
    out = []
    for step in range(1, steps + 1):
        loss = p.sum() * (float('inf') if step in overflow_steps else 1.0)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        out.append(float(scaler.get_scale()))
    return out


# (growth_interval, steps, {step: tasks whose gradient overflows}); the first two are the review's
SCALE_PATTERNS = [(1, 3, {2: 'b'}), (3, 6, {2: 'b', 4: 'a'}), (2, 7, {3: 'ab'}), (1, 5, {2: 'a', 3: 'b'}),
                  (2, 5, {})]


@pytest.mark.parametrize('growth_interval,steps,overflows', SCALE_PATTERNS)
def test_amp_loss_scale_follows_gradscaler(growth_interval, steps, overflows):
    """Any task overflowing is an overflow of the step for the scale: halve and restart the growth
    count, never grow on that step; the other tasks still update (all overflowing: no step)."""
    scaler_kw = dict(init_scale=1024.0, growth_interval=growth_interval)
    want = gradscaler_scales(steps, set(overflows), **scaler_kw)
    model = TinyMTL()
    wrapper = MultiTaskAmpOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01), aggregator=SumAggregator(),
                                       dtype='bfloat16', loss_scale=scaler_kw)
    got, updated = [], []
    for step, batch in enumerate(batches(n=steps), 1):
        before = params_of(model)
        run_wrapper(model, wrapper, batch, scales={t: float('inf') for t in overflows.get(step, '')})
        got.append(float(wrapper.loss_scaler.get_scale()))
        updated.append(any(not torch.equal(p, q) for p, q in zip(model.parameters(), before)))
    assert got == want
    assert updated == [overflows.get(step) != 'ab' for step in range(1, steps + 1)]
    if growth_interval == 1 and steps == 3:
        assert got == [2048.0, 1024.0, 2048.0]
    if growth_interval == 3 and steps == 6:
        assert got[-1] == 256.0


def test_amp_overflow_backs_off_loss_scale():
    model = TinyMTL()
    wrapper = MultiTaskAmpOptimWrapper(sgd(model), aggregator=TBGCAggregator(), dtype='bfloat16')
    scale0 = wrapper.loss_scaler.get_scale()
    run_wrapper(model, wrapper, batches()[0], scales=dict(b=float('inf')))
    assert wrapper.skipped['b'] == 1
    assert wrapper.loss_scaler.get_scale() == scale0 * 0.5
    for p in model.parameters():
        assert torch.isfinite(p).all()


@pytest.mark.parametrize('rescale', ['min', 'mean', 'max', 0.05])
def test_zero_norm_task_does_not_divide_by_zero(rescale):
    model = TinyMTL()
    wrapper = MultiTaskOptimWrapper(sgd(model), aggregator=TBGCAggregator(max_norm=0.1, rescale=rescale))
    run_wrapper(model, wrapper, batches()[0], scales=dict(b=0.0))
    assert wrapper.skipped['b'] == 0
    assert wrapper.last_stats['b.grad_norm'] == 0.0
    assert wrapper.last_stats['b.weight'] == 0.0
    for p in model.parameters():
        assert torch.isfinite(p).all()


@pytest.mark.parametrize('rescale', ['min', 'mean', 'max', 0.02])
def test_rescale_gives_every_task_the_common_norm(rescale):
    model = TinyMTL()
    batch = batches()[0]
    # task b's loss is tiny so its clip does not bind: rescale brings it to the common norm
    wrapper = MultiTaskOptimWrapper(sgd(model), aggregator=TBGCAggregator(max_norm=0.1, rescale=rescale))
    run_wrapper(model, wrapper, batch, scales=dict(b=1e-4))
    s = wrapper.last_stats
    clipped = [min(s[f'{t}.grad_norm'], 0.1) for t in 'ab']
    target = dict(min=min(clipped), mean=sum(clipped) / 2, max=max(clipped)).get(rescale, rescale)
    for t in 'ab':
        assert s[f'{t}.grad_norm_agg'] == pytest.approx(target, rel=1e-5)


def test_streaming_and_matrix_paths_agree_for_every_tbgc_variant():
    for kwargs in [dict(), dict(norm_on='all'), dict(rescale='mean'), dict(own_max_norm=0.05),
                   dict(rescale=0.3, norm_on='all', own_max_norm=1.0)]:
        m1, m2 = TinyMTL(), TinyMTL()
        for m, streaming in ((m1, True), (m2, False)):
            w = MultiTaskOptimWrapper(sgd(m), aggregator=TBGCAggregator(**kwargs), streaming=streaming)
            for batch in batches(n=2):
                run_wrapper(m, w, batch)
        for p, q in zip(m1.parameters(), m2.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=str(kwargs))


def test_head_max_norm_clips_heads_on_their_own():
    model = TinyMTL()
    batch = batches()[0]
    wrapper = MultiTaskOptimWrapper(sgd(model), aggregator=TBGCAggregator(max_norm=0.1, own_max_norm=0.01))
    ref = TinyMTL()
    before = params_of(model)
    run_wrapper(model, wrapper, batch)
    for t in 'ab':
        ref.zero_grad()
        ref.loss(t, batch[t]).backward()
        hg = [p.grad for p in ref.heads[t].parameters()]
        hn = math.sqrt(sum(float(g.pow(2).sum()) for g in hg))
        c = min(1.0, 0.01 / (hn + EPS))
        idx = {'a': slice(4, 6), 'b': slice(6, 8)}[t]
        for p, p0, g in zip(list(model.parameters())[idx], before[idx], hg):
            torch.testing.assert_close(p.detach(), p0 - c * g, rtol=1e-6, atol=1e-8)


def test_gradient_accumulation_averages_aggregated_micro_steps():
    ref, model = TinyMTL(), TinyMTL()
    bs = batches(n=2)
    fn = lambda n: min(1.0, 0.1 / (n + EPS))  # noqa: E731
    acc1 = hand_aggregate(ref, bs[0], fn)
    acc2 = hand_aggregate(ref, bs[1], fn)
    acc = [(a1 + a2) / 2 for a1, a2 in zip(acc1, acc2)]
    before = params_of(model)
    wrapper = MultiTaskOptimWrapper(sgd(model), aggregator=TBGCAggregator(max_norm=0.1), accumulative_counts=2)
    run_wrapper(model, wrapper, bs[0])
    for p, p0 in zip(model.parameters(), before):
        assert torch.equal(p, p0)  # no step after the first micro-step
    run_wrapper(model, wrapper, bs[1])
    assert_step_equals(model, before, acc)


def test_accumulation_remainder_at_the_end_of_training():
    """k=2 over 3 micro-steps: steps 1-2 are averaged, the last (remainder) one stands alone."""
    ref, model = TinyMTL(), TinyMTL()
    bs = batches(n=3)
    fn = lambda n: min(1.0, 0.1 / (n + EPS))  # noqa: E731
    wrapper = MultiTaskOptimWrapper(sgd(model), aggregator=TBGCAggregator(max_norm=0.1), accumulative_counts=2)
    wrapper.initialize_count_status(model, 0, 3)
    before = params_of(model)
    first = [(a + b) / 2 for a, b in zip(hand_aggregate(ref, bs[0], fn), hand_aggregate(ref, bs[1], fn))]
    for b in bs[:2]:
        run_wrapper(model, wrapper, b)
    assert_step_equals(model, before, first)
    with torch.no_grad():  # the reference takes the same SGD step
        for p, g in zip(ref.parameters(), first):
            p -= g
    before = params_of(model)
    run_wrapper(model, wrapper, bs[2])
    assert_step_equals(model, before, hand_aggregate(ref, bs[2], fn))


def test_cosines_are_logged_on_stats_updates():
    model = TinyMTL()
    wrapper = MultiTaskOptimWrapper(sgd(model), aggregator=TBGCAggregator(), stats_interval=2)
    batch = batches()[0]
    rows = []
    for task, x in batch.items():  # the true cosine of the two tasks' shared gradients
        model.zero_grad(set_to_none=True)
        model.loss(task, x).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.shared.parameters()]).double())
    model.zero_grad(set_to_none=True)
    expected = float(rows[0] @ rows[1] / (rows[0].norm() * rows[1].norm()))
    run_wrapper(model, wrapper, batch)  # update 0: a stats update
    assert wrapper.last_stats['cos.a-b'] == pytest.approx(expected, abs=1e-5)
    assert wrapper.last_stats['cos.iter'] == 1.0  # computed at iteration 1 (1-based, as the log)
    run_wrapper(model, wrapper, batch)  # update 1: streaming, no cosine
    assert 'cos.a-b' not in wrapper.last_stats and 'cos.iter' not in wrapper.last_stats
    from mmengine.logging import MessageHub
    hub = MessageHub.get_current_instance()
    # the log repeats the latest cosine at iteration 2; cos.iter says it is iteration 1's
    assert hub.get_scalar('train/cos.iter').current() == 1.0
    run_wrapper(model, wrapper, batch)  # update 2: a stats update again
    assert wrapper.last_stats['cos.iter'] == 3.0 and hub.get_scalar('train/cos.iter').current() == 3.0
    # a matrix-path method also logs them only on stats updates
    wrapper = MultiTaskOptimWrapper(sgd(model), aggregator=dict(type='PCGradAggregator'), stats_interval=2)
    run_wrapper(model, wrapper, batch)
    assert 'cos.a-b' in wrapper.last_stats
    run_wrapper(model, wrapper, batch)
    assert 'cos.a-b' not in wrapper.last_stats
    from mmengine.logging import MessageHub
    assert 'train/cos.a-b' in MessageHub.get_current_instance().log_scalars


def test_matrix_path_norms_are_accurate_on_long_rows():
    """TBGC's matrix path (every stats_interval) measured each task's norm with one float32 norm over
    the whole row: on rows of 10^7-10^8 entries (a ViT-B backbone: 86M) that comes out low by up to
    ~1%, so the clipped task reached the backbone above max_norm. Both paths now agree to ~1e-6."""
    n = 1 << 24
    G = torch.randn(2, n, generator=torch.Generator().manual_seed(0)) * torch.tensor([[1e-3], [3e-2]])
    true = torch.linalg.vector_norm(G.double(), dim=1)
    from projects.allinone.engine.aggregators.base import row_norms
    torch.testing.assert_close(row_norms(G), true, rtol=1e-5, atol=0)
    res = TBGCAggregator(max_norm=0.1).aggregate(G, torch.zeros(2))
    for w, t in zip(res.weights.double(), true):  # each task enters the sum with norm max_norm
        assert float(w * t) == pytest.approx(0.1, rel=1e-5)
    from projects.allinone.engine.aggregators.base import tensors_norm
    assert tensors_norm(list(G[0].split(n // 4))) == pytest.approx(float(true[0]), rel=1e-5)


def test_linear_aggregate_on_random_matrices():
    torch.manual_seed(0)
    G = torch.randn(3, 50, dtype=torch.float64) * torch.tensor([[100.], [1.], [0.01]], dtype=torch.float64)
    res = TBGCAggregator(max_norm=0.1).aggregate(G, torch.zeros(3))
    norms = G.norm(dim=1)
    expect = sum(min(1.0, 0.1 / (float(n) + EPS)) * g for n, g in zip(norms, G))
    torch.testing.assert_close(res.grad, expect)
    res = SumAggregator().aggregate(G, torch.zeros(3))
    torch.testing.assert_close(res.grad, G.sum(0))
    torch.testing.assert_close(res.weights, torch.ones(3, dtype=torch.float64))


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match='max_norm'):
        TBGCAggregator(max_norm=0)
    with pytest.raises(ValueError, match='rescale'):
        TBGCAggregator(rescale='median')
    model = TinyMTL()
    w = MultiTaskOptimWrapper(sgd(model))
    with pytest.raises(RuntimeError, match='bind'):
        w.backward_task('a', model.loss('a', torch.ones(1, 4)))
    w.bind(model.partition())
    with pytest.raises(KeyError, match='unknown task'):
        w.backward_task('c', model.loss('a', torch.ones(1, 4)))
    part = model.partition()
    part['b'] = part['b'] + part['a'][:1]
    with pytest.raises(ValueError, match='belongs to both'):
        MultiTaskOptimWrapper(sgd(model)).bind(part)


# ------------------------------------------------------------------ TBGC on the competition model
@pytest.fixture
def one_thread():
    """On a machine whose cores other jobs share, a second OpenMP thread mostly waits."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def competition_model_reduced():
    """``configs/allinone.py`` (ViT-B + DINO + SETR-PUP + cars head) at reduced size through overrides:
    the ViT-B width with 4 of its 12 blocks (29M shared parameters: rows long enough for float32
    accumulation errors to show), 64 px inputs, 20 queries, one encoder / decoder layer."""
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm

    from projects.allinone.registry import MODELS

    from conftest import REPO
    cfg = Config.fromfile(f'{REPO}/configs/allinone.py')
    cfg.merge_from_dict({
        'model.backbone.img_size': 64, 'model.backbone.out_indices': (0, 1, 2, 3), 'model.backbone.drop_path_rate': 0.0,
        'model.backbone.arch': dict(_delete_=True, embed_dims=768, num_layers=4, num_heads=12,
                                    feedforward_channels=3072),
        'model.tasks.det.num_queries': 20, 'model.tasks.det.encoder.num_layers': 1,
        'model.tasks.det.decoder.num_layers': 1, 'model.tasks.det.dn_cfg.group_cfg.num_dn_queries': 10,
        'model.tasks.seg.data_preprocessor.size': (64, 64),
        'model.backbone.init_cfg': None})  # random weights: the rows' lengths are what matters here
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return revert_sync_batchnorm(model)  # one CPU process: SyncBN is BN


def competition_batch(n=2, size=64):
    """Generated inputs in each library's format: boxes for det (45 classes), label maps for seg (19),
    labels for cls (196)."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData, PixelData
    from mmpretrain.structures import DataSample
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(5)

    def images():
        return [torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8) for _ in range(n)]
    meta = dict(img_shape=(size, size), ori_shape=(size, size), scale_factor=(1.0, 1.0))
    det = []
    for _ in range(n):
        s = DetDataSample(metainfo=meta)
        xy = torch.rand(3, 2, generator=g) * (size - 20)
        s.gt_instances = InstanceData(bboxes=torch.cat([xy, xy + 8 + torch.rand(3, 2, generator=g) * 10], 1),
                                      labels=torch.randint(0, 45, (3, ), generator=g))
        det.append(s)
    seg = []
    for _ in range(n):
        s = SegDataSample(metainfo=meta)
        s.gt_sem_seg = PixelData(data=torch.randint(0, 19, (1, size, size), generator=g))
        seg.append(s)
    cls = [DataSample().set_gt_label(int(torch.randint(0, 196, (1, ), generator=g))) for _ in range(n)]
    return dict(det=dict(inputs=images(), data_samples=det), seg=dict(inputs=images(), data_samples=seg),
                cls=dict(inputs=images(), data_samples=cls))


@pytest.mark.slow
def test_tbgc_matrix_and_streaming_paths_agree_on_the_competition_model(registered, one_thread):
    """Every stats_interval TBGC takes the matrix path; on this config it logged aggregated norms
    0.9-1.7% above max_norm (its task norms summed the squares of a long row in float32; 0.6% on the
    29M-long rows here). The matrix path now clips each task to max_norm and weighs it exactly as the
    streaming path would: ``min(1, max_norm / (norm + 1e-6))`` of the wrapper's norm."""
    model = competition_model_reduced()
    wrapper = MultiTaskOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01),
                                    aggregator=TBGCAggregator(max_norm=0.1), stats_interval=1)
    model.train_step(competition_batch(n=1), wrapper)
    stats = wrapper.last_stats
    assert 'cos.det-seg' in stats  # the matrix path was taken
    for t in ('det', 'seg', 'cls'):
        norm = stats[f'{t}.grad_norm']
        assert norm > 0.12  # the clip binds for every task
        assert stats[f'{t}.grad_norm_agg'] == pytest.approx(0.1, rel=1e-5), t
        assert stats[f'{t}.weight'] == pytest.approx(min(1.0, 0.1 / (norm + 1e-6)), rel=1e-5), t  # streaming's


def test_task_grad_hooks_see_each_task_gradient_alone():
    """Observers registered on the wrapper get every task's gradient when it is final, alone in .grad;
    a removed hook is not called again."""
    model = TinyMTL()
    batch = batches()[0]
    expected = {}
    for task, x in batch.items():  # reference: each task's backward on its own
        model.zero_grad(set_to_none=True)
        model.loss(task, x).backward()
        expected[task] = [p.grad.clone() for p in model.shared.parameters()] + \
                         [p.grad.clone() for p in model.heads[task].parameters()]
    model.zero_grad(set_to_none=True)
    wrapper = MultiTaskOptimWrapper(sgd(model), aggregator=dict(type='SumAggregator'), stats_interval=0)
    seen = []

    def hook(task, shared, own):
        seen.append(task)
        for got, want in zip([p.grad for p in shared + own], expected[task]):
            torch.testing.assert_close(got, want)

    handle = wrapper.register_task_grad_hook(hook)
    run_wrapper(model, wrapper, batch)
    assert seen == ['a', 'b'] and wrapper.task_grad_hooks == [hook]
    handle.remove()
    run_wrapper(model, wrapper, batch)
    assert seen == ['a', 'b'] and wrapper.task_grad_hooks == []


def test_grad_sync_is_set_once():
    from projects.allinone.engine.optim_wrappers import GradSync
    model = TinyMTL()
    wrapper = MultiTaskOptimWrapper(sgd(model))
    assert type(wrapper.grad_sync) is GradSync  # one process: the do-nothing sync

    class Sync(GradSync):
        pass

    sync = Sync()
    wrapper.use_grad_sync(sync)
    wrapper.use_grad_sync(sync)  # the same one again: nothing changes
    assert wrapper.grad_sync is sync
    with pytest.raises(RuntimeError, match='already synchronised'):
        wrapper.use_grad_sync(Sync())
    with pytest.raises(TypeError, match='must be a GradSync'):
        wrapper.use_grad_sync(object())


def test_amp_wrapper_is_initialised_by_mmengine_where_mmengine_runs(monkeypatch):
    """With an accelerator (simulated: mmengine's own device check answers yes), mmengine's
    ``AmpOptimWrapper.__init__`` parses ``loss_scale`` and ``dtype`` and builds its scaler; without one
    (this machine), the CPU scaler takes the same forms."""
    from mmengine.optim.optimizer import amp_optimizer_wrapper as amp

    from projects.allinone.engine.optim_wrappers.multitask_optim_wrapper import mmengine_amp_available
    assert not mmengine_amp_available()
    cpu = MultiTaskAmpOptimWrapper(sgd(TinyMTL()), aggregator=TBGCAggregator(), loss_scale=512.0, dtype='bfloat16')
    assert type(cpu.loss_scaler) is torch.amp.GradScaler and cpu.loss_scaler.get_scale() == 512.0
    assert cpu._scale_update_param == 512.0 and cpu.cast_dtype is torch.bfloat16
    with pytest.raises(TypeError, match='loss_scale must be "dynamic", a float or a dict'):
        MultiTaskAmpOptimWrapper(sgd(TinyMTL()), loss_scale='static')

    monkeypatch.setattr(amp, 'is_cuda_available', lambda: True)
    warnings.filterwarnings('ignore', '`torch.cuda.amp.GradScaler', FutureWarning)  # mmengine's scaler class
    assert mmengine_amp_available()
    with pytest.warns(UserWarning):   # torch's: the CUDA scaler disables itself without CUDA
        w = MultiTaskAmpOptimWrapper(sgd(TinyMTL()), aggregator=TBGCAggregator(max_norm=0.5), loss_scale=512.0,
                                     dtype='bfloat16', stats_interval=7)
    assert type(w.loss_scaler) is amp.GradScaler and w._scale_update_param == 512.0
    assert w.cast_dtype is torch.bfloat16
    assert isinstance(w.aggregator, TBGCAggregator) and w.aggregator.max_norm == 0.5 and w.stats_interval == 7
    with pytest.raises(TypeError, match='loss_scale must be of type float, dict, or "dynamic"'):  # mmengine's
        MultiTaskAmpOptimWrapper(sgd(TinyMTL()), loss_scale='static')
    with pytest.raises(AssertionError, match='dtype should be any of'):                          # mmengine's
        MultiTaskAmpOptimWrapper(sgd(TinyMTL()), dtype='int8')


def test_wrapper_binds_itself_to_the_model_in_optim_context():
    """mmengine's per-step context receives the model: an unbound wrapper takes the model's parameter
    partition there (the model does not bind it), and steps exactly as one bound by hand; a model
    without a partition is a clear error."""
    class Partitioned(TinyMTL):
        def parameter_partition(self):
            return self.partition()

    by_hand, model = Partitioned(), Partitioned()
    hand = MultiTaskOptimWrapper(sgd(by_hand), aggregator=TBGCAggregator(max_norm=0.1))
    hand.bind(by_hand.partition())
    wrapper = MultiTaskOptimWrapper(sgd(model), aggregator=TBGCAggregator(max_norm=0.1))
    assert not wrapper.is_bound
    for batch in batches():
        with wrapper.optim_context(model):   # binds on the first step
            for task, x in batch.items():
                wrapper.backward_task(task, model.loss(task, x))
        wrapper.update_tasks()
        run_wrapper(by_hand, hand, batch)
    assert wrapper.is_bound and wrapper.aggregator.tasks == ['a', 'b']
    for p, q in zip(model.parameters(), by_hand.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(TypeError, match='TinyMTL has no parameter_partition'):
        with MultiTaskOptimWrapper(sgd(TinyMTL())).optim_context(TinyMTL()):
            pass
