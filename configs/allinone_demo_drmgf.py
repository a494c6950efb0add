# The demo with DR-MGF (Dynamic Routes and Meta-weighted Gradient Fusion): training runs in rounds; in
# each round every task gets a task-dominant pass of `round_iters` iterations (its loss at 1, the others'
# at aux_weight) from the same start weights, and the T updates are fused per connection of every shared
# conv by the learned task importances times meta-learned coefficients. During the first half the
# gated forward lets the importances learn which connections each task uses; then they are frozen and the
# coefficients kept with an EMA. Inference is the plain dense network. Composes with any aggregator
# (the passes go through the config's optim wrapper).
#   python tools/train.py configs/allinone_demo_drmgf.py
# Cost: each round is 3 x 25 training iterations + 25 meta-fusion batches (forward + backward to the
# coefficients only); extra memory: one copy of the model, 3 deltas of the backbone, the importances.
_base_ = ['./allinone_demo.py']

train_cfg = dict(type='DRMGFTrainLoop', round_iters=25, meta_iters=None, gate_until=0.5, reverse_order=True,
                 drmgf=dict(layers=None, aux_weight=0.5, own_gate=10.0, alpha_init=1e-3, alpha_ema=0.9,
                            importance_optim=dict(type='Adam', lr=1e-4),
                            fusion_optim=dict(type='Adam', lr=0.1)))
