# The demo with DR-MGF (Dynamic Routes and Meta-weighted Gradient Fusion): training runs in rounds; in
# each round every task gets a task-dominant pass of `round_iters` iterations (its loss at 1, the others'
# at aux_weight) from the same start parameters, and the T updates are fused per connection of every
# shared conv by the learned task importances times meta-learned coefficients (shared norm weights and
# biases per channel by their own coefficients). During the first half the gated forward of the shared
# convs lets the importances learn which connections each task uses (each task's own convs are rescaled
# to their initial slice norms at every pass end, as the official code does); then the importances are
# frozen, the coefficients are smoothed with an EMA after each fusion, and the importance / coefficient
# learning rates are halved. Inference is the plain dense network. Composes with any aggregator (the
# passes go through the config's optim wrapper). The defaults are what the official code runs; the
# alternatives: ema_before_fusion=True, norm_fusion='equal', task_convs='gate' or None,
# reset_buffers=True, lr_milestones=(), reverse_order=True.
#   python tools/train.py configs/allinone_demo_drmgf.py
# Cost: each round is 3 x 25 training iterations + 25 meta-fusion batches (forward + backward to the
# coefficients only); extra memory: one copy of the model, 3 deltas of the backbone, the importances.
_base_ = ['./allinone_demo.py']

train_cfg = dict(type='DRMGFTrainLoop', round_iters=25, meta_iters=None, gate_until=0.5, reverse_order=False,
                 drmgf=dict(layers=None, aux_weight=0.5, own_gate=10.0, alpha_init=1e-3, alpha_ema=0.9,
                            importance_optim=dict(type='Adam', lr=1e-4),
                            fusion_optim=dict(type='Adam', lr=0.1),
                            ema_before_fusion=False, norm_fusion='meta', task_convs='rescale',
                            reset_buffers=False, lr_milestones=(0.5, ), lr_gamma=0.5))
