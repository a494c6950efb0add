"""tools/compare_methods.py: per-method child configs, finished-run detection, the table and plot."""
import json
import os.path as osp
import sys

from conftest import DEMO_CFG, REPO

sys.path.insert(0, osp.join(REPO, 'tools'))


def test_child_config_changes_only_the_method_and_scales_the_schedule(tmp_path, registered):
    from mmengine.config import Config

    from compare_methods import child_config
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
