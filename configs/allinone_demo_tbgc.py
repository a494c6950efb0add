# The demo with TBGC instead of the vanilla sum of task gradients + one global clip: each task's
# backbone gradient is clipped to 0.1 on its own (the paper's value: the clip binds for every task,
# so each reaches the backbone with the same norm), all of that task's gradients scaled alike.
# Same seed, data and schedule as allinone_demo.py.
_base_ = ['./allinone_demo.py']

optim_wrapper = dict(
    aggregator=dict(_delete_=True, type='TBGCAggregator', max_norm=0.1),
    clip_grad=None)
