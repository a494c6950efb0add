# Leaderboard B on the demo: the organisers finetune a submission's code on undisclosed data of one
# task. This config starts from the AllInOne demo checkpoint (`make demo`) and finetunes the shared
# backbone and the detection branch on a *new* detection data set (another draw of the demo
# generator: `python tools/make_demo_data.py --seed 1 --out data/demo_b`); segmentation and
# classification are dropped (`task=None` removes a task of the base config everywhere).
#   make finetune-demo
# To finetune another task keep that task instead (and set its head's num_classes if the new data
# has other classes: mismatched head weights are then left at their initialisation, with a warning).
_base_ = ['./allinone_demo.py']

new_root = 'data/demo_b/'
model = dict(tasks=dict(seg=None, cls=None))
train_dataloader = dict(
    seg=None, cls=None,
    det=dict(dataset=dict(data_root=new_root + 'dec/')))
val_dataloader = dict(seg=None, cls=None, det=dict(dataset=dict(data_root=new_root + 'dec/')))
test_dataloader = val_dataloader
val_evaluator = dict(seg=None, cls=None, det=dict(ann_file=new_root + 'dec/val.json'))
test_evaluator = val_evaluator
# the board of this run: the one task that is finetuned
val_cfg = dict(leaderboard=dict(boards=dict(B=['det'])))
test_cfg = dict(leaderboard=dict(boards=dict(B=['det'])))

# weights of every matching layer (backbone, detection branch) from the AllInOne checkpoint; the
# other tasks' weights in it are reported as unexpected keys and ignored
load_from = 'work_dirs/allinone_demo/iter_1000.pth'

max_iters = 300
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
optim_wrapper = dict(
    optimizer=dict(lr=5e-4),
    # a pretrained backbone moves slower than the head, as in the competition config
    # (bypass_duplicate: RTMDet's head shares its convs across levels, as in mmdet's RTMDet configs)
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}, bypass_duplicate=True))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=30, end=max_iters, eta_min=5e-6),
]
default_hooks = dict(checkpoint=dict(interval=max_iters))
