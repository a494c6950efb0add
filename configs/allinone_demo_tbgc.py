# The demo with TBGC (per-task backbone gradient clip, max norm per task) instead of the vanilla
# sum of task gradients + one global clip. Same seed, data and schedule as allinone_demo.py.
_base_ = ['./allinone_demo.py']

optim_wrapper = dict(
    aggregator=dict(_delete_=True, type='TBGCAggregator', max_norm=1.0),
    clip_grad=None)
