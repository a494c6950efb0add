"""tools/compare_methods.py: per-method child configs, finished-run detection, the table and plot."""
import json
from pathlib import Path

from conftest import DEMO_CFG


def test_child_config_changes_only_the_method_and_scales_the_schedule(tmp_path, registered):
    from compare_methods import child_config
    from mmengine.config import Config
    base = Config.fromfile(DEMO_CFG)
    path = tmp_path / 'tbgc_pcgrad.py'
    child_config(DEMO_CFG, 'tbgc+pcgrad', str(path), max_iters=500, val_points=4)
    cfg = Config.fromfile(str(path))
    assert cfg.optim_wrapper.aggregator.type == 'ChainAggregator'
    assert [s['type'] for s in cfg.optim_wrapper.aggregator.steps] == ['TBGCAggregator', 'PCGradAggregator']
    assert cfg.optim_wrapper.clip_grad is None  # TBGC replaces the global clip
    assert cfg.optim_wrapper.optimizer == base.optim_wrapper.optimizer
    assert cfg.train_cfg.max_iters == 500 and cfg.train_cfg.val_interval == 125
    assert [(s['begin'], s['end']) for s in cfg.param_scheduler] == [(0, 50), (50, 500)]  # 100/1000 -> 50/500
    assert cfg.model == base.model and cfg.train_dataloader == base.train_dataloader
    child_config(DEMO_CFG, 'pcgrad', str(path))
    cfg = Config.fromfile(str(path))
    assert cfg.optim_wrapper.aggregator == dict(type='PCGradAggregator')
    assert cfg.optim_wrapper.clip_grad == base.optim_wrapper.clip_grad and cfg.train_cfg == base.train_cfg


def _fake_run(run, scores, last_iter):
    run.mkdir(parents=True)
    history = [dict(mode='val', iter=i, **{f'leaderboard/{t}': v * i / last_iter for t, v in scores.items()})
               for i in (last_iter // 2, last_iter)]
    (run / 'leaderboard_history.json').write_text(json.dumps(history))
    (run / 'leaderboard.json').write_text(json.dumps(history[-1]))
    vis = run / '20260101_000000' / 'vis_data'
    vis.mkdir(parents=True)
    (vis / 'scalars.json').write_text('\n'.join(json.dumps(dict(loss=1.0, time=t, step=i))
                                                for i, t in enumerate([9.0, 0.5, 0.4, 0.6])))


def test_finished_runs_are_reused_and_tabulated(tmp_path, registered):
    from compare_methods import finished, main
    out = tmp_path / 'methods'
    _fake_run(out / 'vanilla', dict(det=0.8, seg=0.6, cls=0.4, A=0.6), 500)
    _fake_run(out / 'tbgc_pcgrad', dict(det=0.9, seg=0.7, cls=0.5, A=0.7), 500)
    assert finished(str(out / 'vanilla'), 500) and not finished(str(out / 'vanilla'), 1000)
    main(['--methods', 'vanilla', 'tbgc+pcgrad', '--max-iters', '500', '--bench-steps', '0', '--out', str(out)])
    table = (out / 'methods.md').read_text()
    assert '| vanilla | 0.8000 | 0.6000 | 0.4000 | 0.6000 | 0.500 |' in table  # s/iter: median, 2nd half
    assert '| tbgc+pcgrad | 0.9000 | 0.7000 | 0.5000 | 0.7000 |' in table
    assert (out / 'curves.png').stat().st_size > 0


def test_method_names_take_one_model_side_part_and_aggregators(tmp_path, registered):
    import pytest
    from compare_methods import main

    from projects.allinone.methods import method_config_overrides, method_context_keys, split_method
    assert split_method('recon+pcgrad') == ('recon', ['pcgrad'])
    assert split_method('tbgc+pcgrad') == (None, ['tbgc', 'pcgrad'])
    over = method_config_overrides('recon+pcgrad', recon_report='/r/recon_report.json')
    assert over['optim_wrapper'] == dict(aggregator=dict(type='PCGradAggregator'))
    assert over['model']['recon']['report'] == '/r/recon_report.json'
    assert method_context_keys('recon+pcgrad') == {'recon_report'} and not method_context_keys('gradsplit')
    over = method_config_overrides('gradsplit+tbgc')
    assert over['model'] == dict(grad_split=dict(modules=None))
    assert over['optim_wrapper'] == dict(aggregator=dict(type='TBGCAggregator', max_norm=0.1), clip_grad=None)
    assert method_config_overrides('gradsplit')['optim_wrapper'] == dict(aggregator=dict(type='SumAggregator'))
    with pytest.raises(ValueError, match='model-side'):
        split_method('recon+gradsplit')
    with pytest.raises(KeyError, match="'pcgard'.*gradsplit.*recon"):
        method_config_overrides('recon+pcgard')
    with pytest.raises(KeyError, match="'recno'"):  # compare_methods checks every name before training
        main(['--methods', 'vanilla', 'recno', '--out', str(tmp_path / 'methods')])
    assert not (tmp_path / 'methods' / 'vanilla').exists()


def test_child_config_merges_a_preset_train_cfg_with_the_schedule(tmp_path, registered, monkeypatch):
    from compare_methods import child_config
    from mmengine.config import Config

    from projects.allinone.methods import MODEL_METHODS, changes_train_loop
    monkeypatch.setitem(MODEL_METHODS, 'fakeloop', dict(train_cfg=dict(type='FakeTrainLoop', inner_steps=2),
                                                        model=dict(fake_option=3)))
    assert changes_train_loop('fakeloop+pcgrad') and not changes_train_loop('recon+pcgrad')
    path = tmp_path / 'fakeloop_pcgrad.py'
    child_config(DEMO_CFG, 'fakeloop+pcgrad', str(path), max_iters=500, val_points=4)
    text = path.read_text()
    assert sum(line.startswith('train_cfg =') for line in text.splitlines()) == 1
    assert sum(line.startswith('model =') for line in text.splitlines()) == 1
    cfg = Config.fromfile(str(path))
    assert cfg.train_cfg == dict(type='FakeTrainLoop', inner_steps=2, max_iters=500, val_interval=125)
    assert cfg.model.fake_option == 3 and cfg.optim_wrapper.aggregator == dict(type='PCGradAggregator')


def test_recon_report_reaches_the_model_config(tmp_path, registered):
    from compare_methods import child_config
    from mmengine.config import Config
    base = Config.fromfile(DEMO_CFG)
    path, report = tmp_path / 'recon_pcgrad.py', str(tmp_path / 'search' / 'recon_report.json')
    child_config(DEMO_CFG, 'recon+pcgrad', str(path), max_iters=500, recon_report=report)
    cfg = Config.fromfile(str(path))
    assert cfg.model.recon == dict(report=report, param_budget=0.05, score='raw', threshold=0.0)
    assert {k: v for k, v in cfg.model.items() if k != 'recon'} == base.model
    assert cfg.optim_wrapper.aggregator == dict(type='PCGradAggregator')
    assert cfg.train_cfg == dict(base.train_cfg, max_iters=500, val_interval=125)


def test_recon_search_runs_once_and_the_table_marks_unmeasured_loops(tmp_path, registered, monkeypatch):
    import compare_methods

    from projects.allinone.benchmarking import method_cost
    from projects.allinone.methods import MODEL_METHODS
    monkeypatch.setitem(MODEL_METHODS, 'fakeloop', dict(train_cfg=dict(type='FakeTrainLoop')))
    out = tmp_path / 'methods'
    for run in ('vanilla', 'recon_pcgrad', 'fakeloop'):
        _fake_run(out / run, dict(det=0.8, seg=0.6, cls=0.4, A=0.6), 500)
    calls = []

    def fake_search(cmd, **kwargs):  # stands in for tools/recon_search.py: writes its report where it would
        calls.append(cmd)
        report = Path(cmd[cmd.index('--work-dir') + 1]) / 'recon_search' / 'recon_report.json'
        report.parent.mkdir(parents=True)
        report.write_text('{}')
        return 0

    def fake_measure(methods, data, steps=10, warmup=2, threads=2, memory=True, context=None):
        assert context['recon_report'] == str(out / 'recon_search' / 'recon_search' / 'recon_report.json')
        speed = {m: dict(median_s=1.0, ratio_to_joint=1.1) for m in ['joint', 'vanilla', 'recon+pcgrad']}
        return dict(speed=speed, peak_tensor_mb={m: 90.0 for m in speed}, skipped={'fakeloop': 'own loop'})

    monkeypatch.setattr(compare_methods, 'run_with_progress', lambda cmd, *args, **kwargs: fake_search(cmd))
    monkeypatch.setattr(method_cost, 'measure', fake_measure)
    argv = ['--methods', 'vanilla', 'recon+pcgrad', 'fakeloop', '--max-iters', '500', '--out', str(out),
            '--bench-steps', '2']
    compare_methods.main(argv)
    assert len(calls) == 1 and calls[0][calls[0].index('--iters') + 1] == '125'  # a quarter of the run
    assert calls[0][calls[0].index('--work-dir') + 1] == str(out / 'recon_search')
    compare_methods.main(argv)
    assert len(calls) == 1  # the report exists: reused
    table = (out / 'methods.md').read_text()
    assert '| recon+pcgrad | 0.8000 | 0.6000 | 0.4000 | 0.6000 | 0.500 | 1.000 | 90.0 |' in table
    assert '| fakeloop | 0.8000 | 0.6000 | 0.4000 | 0.6000 | 0.500 | - | - |' in table
    assert 'no step cost for fakeloop' in table and 'recon_search/recon_report.json' in table
