# The demo with a *shared* neck: one FPN after the backbone feeds all three tasks, so its
# parameters are shared like the backbone's and the multi-task methods act on backbone + neck
# (in allinone_demo.py each task has a neck of its own and only the backbone is shared).
#   python tools/train.py configs/allinone_demo_shared_neck.py
_base_ = ['./allinone_demo.py']

model = dict(
    neck=dict(type='FPN', in_channels=[32, 64, 128, 256], out_channels=64, num_outs=4),
    tasks=dict(
        # strides 8/16/32 of the shared pyramid; the detector's own neck is gone
        det=dict(backbone=dict(type='SharedFeatures', in_indices=[1, 2, 3]), neck=None),
        seg=dict(decode_head=dict(in_channels=[64, 64, 64, 64])),
        cls=dict(head=dict(in_channels=64)),
    ))
