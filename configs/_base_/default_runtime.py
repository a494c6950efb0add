# Runtime shared by every AllInOne config (mmdet conventions: the project registers into mmdet's
# registries; parts from mmseg / mmpretrain carry `_scope_`).
default_scope = 'mmdet'
custom_imports = dict(imports=['projects.allinone'], allow_failed_imports=False)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # tools/train.py and test.py switch nccl to gloo on a machine without GPUs
    dist_cfg=dict(backend='nccl'))

# Data parallel (tools/dist_train.sh, --launcher pytorch; ignored in one process): each task's
# gradients are averaged over the ranks before the per-task aggregation, as one process with the
# global batch would see them. mode='approximate' averages only the per-task norms, then the
# combined gradient once (docs/distributed_amp.md). BatchNorm statistics stay per rank unless
# the model uses SyncBN.
model_wrapper_cfg = dict(type='MultiTaskDistributedDataParallel', mode='exact')

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # max_keep_ckpts >= 2: mmengine deletes the oldest checkpoint *before* writing the next, so a
    # run killed mid-write still has a whole one for --resume
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=1000, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'))

# random states in checkpoints, so that --resume repeats the uninterrupted run's random draws;
# the MultiBranchAugment schedules of the train pipelines, and the share of samples per branch in the log
custom_hooks = [dict(type='RandomStateHook'), dict(type='AugBranchHook')]

# mmengine's LogProcessor, with evaluation headers that name each task's loader
log_processor = dict(type='MultiTaskLogProcessor', window_size=50, by_epoch=False)
vis_backends = [dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]
# no fixed name: mmengine names it after the run, so a second Runner of the same process (a notebook, the
# tests) gets its own visualizer and save_dir instead of the first one's instance
visualizer = dict(type='Visualizer', vis_backends=vis_backends)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
