# The demo with GradSplit: at every block of the last ResNet stage (layer4.0, layer4.1: the default)
# the output channels are split into one group per task (det, seg, cls: 85/86/85 of 256), and each
# task's backward reaches only its own group there, so each block's last conv + norm and the
# downsample are trained per group by their task only (43% of the shared parameters; printed at
# start). The forward, the parameters and inference are those of the plain demo model. Composes with
# any aggregator (e.g. optim_wrapper.aggregator=dict(type='PCGradAggregator')).
#   python tools/train.py configs/allinone_demo_gradsplit.py
# Other module series: modules=['backbone.layer3.*', 'backbone.layer4.*'] (every block of the last
# two stages), or ['backbone.layer4'] (the stage output only: the last block's last conv + norm).
# A relation matrix instead of the identity: relation=[[1, 1, 0], [0, 1, 0], [0, 0, 1]] (det may also
# train seg's group), a JSON file, or relation='affinity' with
#   custom_hooks = [dict(type='GradSplitAffinityHook', warmup_iters=100, interval=10,
#                        threshold=0.5, normalize='self')]
# (estimated during a warm-up of plain joint training, written to WORK_DIR/gradsplit_relation.json).
_base_ = ['./allinone_demo.py']

model = dict(grad_split=dict(modules=None, relation=None))
