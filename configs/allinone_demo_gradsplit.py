# The demo with GradSplit: the output channels of the last ResNet stage are split into one group per
# task (det, seg, cls: 85/86/85 of 256), and each task's backward reaches only its own group there;
# the forward, the parameters and inference are those of the plain demo model. Composes with any
# aggregator (e.g. optim_wrapper.aggregator=dict(type='PCGradAggregator')).
#   python tools/train.py configs/allinone_demo_gradsplit.py
# A relation matrix instead of the identity: relation=[[1, 1, 0], [0, 1, 0], [0, 0, 1]] (det may also
# train seg's group), a JSON file, or relation='affinity' with
#   custom_hooks = [dict(type='GradSplitAffinityHook', warmup_iters=100, interval=10)]
# (estimated during a warm-up of plain joint training, written to WORK_DIR/gradsplit_relation.json).
_base_ = ['./allinone_demo.py']

model = dict(grad_split=dict(modules=['backbone.layer4'], relation=None))
