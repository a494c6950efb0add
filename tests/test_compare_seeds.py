"""tools/compare_methods.py --seeds: Δm%, ranks, mean ± std, run summaries (reuse, refusal, missing cells)."""
import json
import os.path as osp

import pytest

TASKS = ['det', 'seg', 'cls']
FP = dict(hash='h0', keys=dict(model='m', train_cfg='t'))


def _summary(method, seed, scores, fp=FP, max_iters=300):
    from projects.allinone.utils.method_table import is_single, run_summary
    tasks = [method.split(':')[1]] if is_single(method) else TASKS
    final = dict(scores, A=sum(scores[t] for t in tasks) / len(tasks))
    history = [dict(mode='val', iter=i, **{f'leaderboard/{k}': v * i / max_iters for k, v in final.items()})
               for i in (max_iters // 2, max_iters)]
    return run_summary(method, seed, tasks, history, 0.5, fp, dict(max_iters=max_iters, val_interval=max_iters // 2))


def test_delta_m_mean_std_and_ranks_by_hand():
    from projects.allinone.utils.method_table import delta_m, fmt_mean_std, mean_ranks, mean_std
    base = dict(det=0.8, seg=0.5, cls=0.4)
    # +10%, -10%, +25%: (10 - 10 + 25) / 3
    assert delta_m(dict(det=0.88, seg=0.45, cls=0.5), base, TASKS) == pytest.approx(25 / 3)
    assert delta_m(base, base, TASKS) == 0
    with pytest.raises(KeyError, match='seg'):
        delta_m(dict(det=0.9, cls=0.4), base, TASKS)
    with pytest.raises(ZeroDivisionError, match='cls'):
        delta_m(dict(det=0.9, seg=0.5, cls=0.4), dict(base, cls=0.0), TASKS)
    assert mean_std([0.1, 0.2, 0.3]) == (pytest.approx(0.2), pytest.approx(0.1))  # sample std (n - 1)
    assert mean_std([0.7]) == (0.7, None)
    assert fmt_mean_std([0.1, 0.2, 0.3]) == '0.2000 ± 0.1000' and fmt_mean_std([0.7]) == '0.7000'
    assert fmt_mean_std([1.5, 2.5], 2, signed=True) == '+2.00 ± 0.71' and fmt_mean_std([]) == '—'
    means = dict(a=dict(det=0.9, seg=0.5, cls=0.3),   # places 1, 3, 2.5 (tie with b)
                 b=dict(det=0.8, seg=0.7, cls=0.3),   # 2, 1, 2.5
                 c=dict(det=0.7, seg=0.6, cls=0.4),   # 3, 2, 1
                 d=dict(det=0.95, seg=0.9))           # no cls: not ranked
    assert mean_ranks(means, TASKS) == pytest.approx(dict(a=6.5 / 3, b=5.5 / 3, c=2.0))


def test_table_with_missing_cells_and_the_seed_spread():
    from projects.allinone.utils.method_table import compare, table_markdown
    seeds = [0, 1, 2]
    runs = {('vanilla', 0): dict(det=0.80, seg=0.50, cls=0.40), ('vanilla', 1): dict(det=0.82, seg=0.52, cls=0.38),
            ('vanilla', 2): dict(det=0.78, seg=0.48, cls=0.42),
            ('mgda', 0): dict(det=0.40, seg=0.60, cls=0.20), ('mgda', 1): dict(det=0.44, seg=0.62, cls=0.22),
            ('single:det', 0): dict(det=0.9), ('single:det', 1): dict(det=0.7),
            ('single:seg', 0): dict(seg=0.5), ('single:cls', 2): dict(cls=0.4)}
    summaries = {k: _summary(*k, v) for k, v in runs.items()}
    comp = compare(summaries, ['vanilla', 'mgda', 'pcgrad', 'single:det', 'single:seg', 'single:cls'], seeds, TASKS)
    assert comp['baseline'] == pytest.approx(dict(det=0.8, seg=0.5, cls=0.4))  # mean over the seeds each has
    assert comp['baseline_seeds'] == dict(det=2, seg=1, cls=1)
    mgda = comp['rows']['mgda']
    assert mgda['seeds'] == [0, 1] and mgda['missing'] == [2]
    # per seed: ((0.4-0.8)/0.8 + (0.6-0.5)/0.5 + (0.2-0.4)/0.4) / 3 = (-50 + 20 - 50) / 3; seed 1: (-45 + 24 - 45) / 3
    assert mgda['delta_m'] == pytest.approx([-80 / 3, -22.0])
    assert comp['rows']['vanilla']['delta_m'] == pytest.approx([0.0, 0.5, -0.5])  # (2.5 + 4 - 5) / 3, ...
    # places: vanilla 1 (det), 2 (seg), 1 (cls); mgda 2, 1, 2
    assert comp['rows']['vanilla']['mean_rank'] == pytest.approx(4 / 3) and mgda['mean_rank'] == pytest.approx(5 / 3)
    assert comp['rows']['pcgrad']['mean_rank'] is None and 'mean_rank' not in comp['rows']['single:det']
    assert mgda['vs_reference']['diff'] == pytest.approx(1.24 / 3 - 1.7 / 3)
    assert mgda['vs_reference']['beyond_spread'] is True  # 0.153 > 0.0189 + 0.0067
    table = table_markdown(comp, cost=dict(vanilla=dict(ratio_to_vanilla=1.0, peak_tensor_mb=92.9)))
    rows = {line.split(' | ')[0][2:]: line for line in table.splitlines() if line.startswith('| ')}
    assert rows['vanilla'].startswith('| vanilla | 3/3 | 0.8000 ± 0.0200 | 0.5000 ± 0.0200 | 0.4000 ± 0.0200 | '
                                      '0.5667 ± 0.0067 | — | +0.00 ± 0.50 | 1.33 | 0.500 | 1.000 | 92.9 |')
    assert rows['mgda'].startswith('| mgda | 2/3 (no 2) | 0.4200 ± 0.0283 | 0.6100 ± 0.0141 | 0.2100 ± 0.0141 | '
                                   '0.4133 ± 0.0189 | -0.1533 * | -24.33 ± 3.30 | 1.67 | 0.500 | — | — |')
    assert rows['pcgrad'] == '| pcgrad | 0/3 (no 0, 1, 2) | — | — | — | — | — | — | — | — | — | — |'
    assert rows['single:det'].startswith('| single:det | 2/3 (no 2) | 0.8000 ± 0.1414 | — | — | 0.8000 ± 0.1414 | — '
                                         '| 0 (reference) |')
    assert 'positive = better than the single-task models' in table


def test_no_delta_m_without_every_baseline():
    from projects.allinone.utils.method_table import compare, table_markdown
    summaries = {('vanilla', 0): _summary('vanilla', 0, dict(det=0.8, seg=0.5, cls=0.4)),
                 ('single:det', 0): _summary('single:det', 0, dict(det=0.9))}
    comp = compare(summaries, ['vanilla', 'single:det'], [0], TASKS)
    assert comp['rows']['vanilla']['delta_m'] == []
    assert '| vanilla | 1/1 | 0.8000 | 0.5000 | 0.4000 | 0.5667 | — | — | 1.00 |' in table_markdown(comp)


def test_fingerprint_names_what_changed():
    from projects.allinone.utils.method_table import ScheduleMismatch, check_summary, config_fingerprint
    cfg = dict(model=dict(type='M', path='/repo/data/x'), train_cfg=dict(max_iters=300), work_dir='/a',
               randomness=dict(seed=0), default_hooks=dict(logger=dict(interval=50)))
    fp = config_fingerprint(cfg, '/repo', dict(counts=[1, 2]))
    # the work dir, the seed and logging are not part of it; paths under the repository are taken relative
    same = dict(cfg, work_dir='/b', randomness=dict(seed=3), default_hooks=dict(logger=dict(interval=1)))
    assert config_fingerprint(same, '/repo', dict(counts=[1, 2])) == fp
    assert config_fingerprint(dict(cfg, model=dict(type='M', path='/other/data/x')), '/other',
                              dict(counts=[1, 2])) == fp
    summary = _summary('vanilla', 0, dict(det=0.8, seg=0.5, cls=0.4), fp=fp)
    check_summary(summary, fp, 'x.json')
    longer = config_fingerprint(dict(cfg, train_cfg=dict(max_iters=500)), '/repo', dict(counts=[2, 2]))
    with pytest.raises(ScheduleMismatch, match=r"x.json: this run of 'vanilla' \(seed 0\).*data, train_cfg differ "
                       r'\(it ran 300 iterations'):
        check_summary(summary, longer, 'x.json')


def _fake_train(calls, scores):
    """Stands in for tools/train.py: writes the files a finished run leaves in its --work-dir."""
    def call(cmd, **kwargs):
        from mmengine.config import Config
        calls.append(cmd)
        cfg = Config.fromfile(cmd[2])
        work = cmd[cmd.index('--work-dir') + 1]
        n, every = cfg.train_cfg.max_iters, cfg.train_cfg.val_interval
        tasks = [t for t, v in cfg.model.tasks.items() if v is not None]
        s = scores[(osp.basename(cmd[2]), cfg.randomness.seed)]
        history = [dict(mode='val', iter=i, **{f'leaderboard/{t}': s * i / n for t in tasks + ['A']})
                   for i in range(every, n + 1, every)]
        with open(osp.join(work, 'leaderboard_history.json'), 'w') as f:
            json.dump(history, f)
        with open(osp.join(work, 'leaderboard.json'), 'w') as f:
            json.dump(history[-1], f)
        return 0
    return call


def test_runs_are_summarised_reused_and_a_changed_schedule_refused(tmp_path, registered, monkeypatch):
    import compare_methods

    from projects.allinone.utils.method_table import ScheduleMismatch, load_summary, summary_path
    out, results = tmp_path / 'out', tmp_path / 'results'
    scores = {(f'{m}_s{s}.py', s): 0.1 * (s + 1) + (0.3 if m == 'pcgrad' else 0) for m in ('vanilla', 'pcgrad')
              for s in (0, 1)}
    scores.update({(f'single-{t}_s{s}.py', s): 0.5 for t in TASKS for s in (0, 1)})
    calls = []
    monkeypatch.setattr(compare_methods.subprocess, 'call', _fake_train(calls, scores))
    argv = ['--methods', 'vanilla', 'pcgrad', '--seeds', '0', '1', '--single-task', '--max-iters', '40',
            '--val-points', '2', '--bench-steps', '0', '--out', str(out), '--results', str(results), '--jobs', '2']
    comp = compare_methods.main(argv)
    assert len(calls) == 10  # (2 methods + 3 single-task) x 2 seeds
    assert all(c[c.index('--work-dir') + 1].endswith(f'seed{c[2][-4]}') for c in calls)
    vanilla1 = load_summary(summary_path(str(results), 'vanilla', 1))
    assert vanilla1['curve'] == [dict(iter=20, det=0.1, seg=0.1, cls=0.1, A=0.1), dict(iter=40, det=0.2, seg=0.2,
                                                                                   cls=0.2, A=0.2)]
    assert vanilla1['schedule']['max_iters'] == 40 and vanilla1['seed'] == 1
    assert load_summary(summary_path(str(results), 'single:seg', 0))['final'] == dict(seg=0.5, A=0.5)
    # Δm% per seed against the single-task models (0.5 each): vanilla (0.1 - 0.5) / 0.5 and (0.2 - 0.5) / 0.5
    assert comp['rows']['vanilla']['delta_m'] == pytest.approx([-80.0, -60.0])
    assert comp['rows']['pcgrad']['delta_m'] == pytest.approx([-20.0, 0.0])
    table = (results / 'comparison.md').read_text()
    assert '| pcgrad | 2/2 | 0.4500 ± 0.0707 |' in table and '40 iterations, validation every 20' in table
    assert (results / 'curves.png').stat().st_size > 0

    # a third seed: the four runs of seeds 0 and 1 are reused from their summaries, even without the work dirs
    import shutil
    shutil.rmtree(out)
    scores.update({(f'{m}_s2.py', 2): 0.3 for m in ('vanilla', 'pcgrad', 'single-det', 'single-seg', 'single-cls')})
    calls.clear()
    compare_methods.main(argv[:6] + ['2'] + argv[6:])
    assert sorted(c[2].rsplit('/', 1)[1] for c in calls) == sorted(
        f'{m}_s2.py' for m in ('vanilla', 'pcgrad', 'single-det', 'single-seg', 'single-cls'))
    assert '| vanilla | 3/3 |' in (results / 'comparison.md').read_text()

    # another schedule: refused before anything trains, naming the file and what differs
    calls.clear()
    with pytest.raises(ScheduleMismatch, match=r'vanilla/seed0.json: this run .* train_cfg differ \(it ran 40 it'):
        compare_methods.main([a if a != '40' else '60' for a in argv])
    assert calls == []


def test_finished_work_dirs_are_summarised_and_stop_after_leaves_cells_missing(tmp_path, registered, monkeypatch):
    import compare_methods
    out, results = tmp_path / 'out', tmp_path / 'results'
    scores = {('vanilla_s0.py', 0): 0.4, ('vanilla_s1.py', 1): 0.6}
    calls = []
    monkeypatch.setattr(compare_methods.subprocess, 'call', _fake_train(calls, scores))
    argv = ['--methods', 'vanilla', '--seeds', '0', '1', '--max-iters', '40', '--bench-steps', '0',
            '--out', str(out), '--results', str(results)]
    compare_methods.main(argv[:4] + argv[5:])  # seed 0 only
    assert len(calls) == 1
    (results / 'vanilla' / 'seed0.json').unlink()  # the summary is lost, the finished run is still there
    compare_methods.main(argv + ['--stop-after', '0'])  # nothing new starts; the finished run is summarised
    assert len(calls) == 1 and (results / 'vanilla' / 'seed0.json').exists()
    table = (results / 'comparison.md').read_text()
    assert '| vanilla | 1/2 (no 1) | 0.4000 |' in table
    with pytest.raises(KeyError, match="single:depth.*no task 'depth'"):
        compare_methods.main(argv + ['--methods', 'single:depth'])


@pytest.mark.slow
def test_two_methods_two_seeds_and_a_baseline_on_the_demo(demo_data, tmp_path, registered, monkeypatch):
    """Real training (one iteration, small demo data, two runs at a time), in two calls as over two sessions:
    the baseline at seed 0 first, then the methods; a last call tabulates all of it and trains nothing."""
    import compare_methods
    out, results = tmp_path / 'out', tmp_path / 'results'
    common = ['--max-iters', '1', '--val-points', '1', '--data-root', demo_data, '--bench-steps', '0', '--threads',
              '1', '--jobs', '2', '--out', str(out), '--results', str(results)]
    compare_methods.main(['--methods', 'single:cls', '--seeds', '0'] + common)
    compare_methods.main(['--methods', 'vanilla', 'pcgrad', '--seeds', '0', '1'] + common)
    for m, s in [('vanilla', 0), ('vanilla', 1), ('pcgrad', 0), ('pcgrad', 1), ('single-cls', 0)]:
        summary = json.loads((results / m / f'seed{s}.json').read_text())
        assert [c['iter'] for c in summary['curve']] == [1] and summary['seed'] == s
        assert 0 <= summary['final']['A'] <= 1 and summary['schedule']['data_counts']['det'] == [30, 6]
    cls = json.loads((results / 'single-cls' / 'seed0.json').read_text())['final']
    assert list(cls) == ['cls', 'A'] and cls['cls'] == cls['A']
    cfg = (out / 'configs' / 'single-cls_s0.py').read_text()
    assert 'model = dict(tasks=dict(det=None, seg=None))' in cfg and 'randomness = dict(seed=0)' in cfg

    def no_training(*a, **k):
        raise AssertionError('--no-train trained')
    monkeypatch.setattr(compare_methods.subprocess, 'call', no_training)
    comp = compare_methods.main(['--methods', 'vanilla', 'pcgrad', 'single:cls', '--seeds', '0', '1', '--no-train']
                                + common)
    vanilla = comp['rows']['vanilla']
    assert vanilla['seeds'] == [0, 1] and len(vanilla['scores']['A']) == 2 and vanilla['delta_m'] == []
    assert comp['rows']['single:cls']['missing'] == [1] and comp['baseline'] == dict(cls=cls['cls'])
    assert '| single:cls | 1/2 (no 1) |' in (results / 'comparison.md').read_text()

    # --no-train with --bench-steps N: no training, but the missing step costs are measured and tabulated
    from projects.allinone.benchmarking import method_cost
    measured = []

    def fake_measure(methods, data, steps=10, warmup=2, threads=2, memory=True, context=None):
        measured.append((list(methods), steps))
        speed = {m: dict(ratio_to_joint=r) for m, r in [('joint', 1.0), ('vanilla', 1.02), ('pcgrad', 1.2)]}
        return dict(speed=speed, peak_tensor_mb=dict(joint=90.0, vanilla=92.5, pcgrad=114.0), machine={})
    monkeypatch.setattr(method_cost, 'measure', fake_measure)
    compare_methods.main(['--methods', 'vanilla', 'pcgrad', 'single:cls', '--seeds', '0', '1', '--no-train']
                         + common + ['--bench-steps', '3'])
    assert measured == [(['vanilla', 'pcgrad'], 3)]
    cost = json.loads((results / 'cost.json').read_text())
    assert cost['pcgrad']['ratio_to_vanilla'] == round(1.2 / 1.02, 4) and cost['pcgrad']['peak_tensor_mb'] == 114.0
    assert '| 1.177 | 114.0 |' in (results / 'comparison.md').read_text()      # 1.1765 in the table's 3 digits
