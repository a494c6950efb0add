# Recipe (a), the challenge baseline under its OpenMMLab-style name: ViT-B/16 pretrained on ImageNet-21k
# (mmpretrain zoo vit-base-p16_in21k-pre_3rdparty_in1k-384px, pos_embed resized to 896 px) shared by
# DINO (4 scales, 900 queries, 45 TT100K classes), SETR-PUP (BDD100K, 19 classes) and a linear head
# (Stanford Cars, 196 classes); TBGC (max_norm 0.1), AdamW 1e-4 with the backbone at x0.1, 52,500
# iterations with per-GPU batches det 2 / seg 2 / cls 16 on 8 GPUs; TTA config for --tta.
# It is configs/allinone.py, the documented entry point, which holds the settings (edit them there):
#   tools/dist_train.sh configs/tbgc-dino-setrpup-linear_vit-b16-in21k-pre_8gpu-52k_track1.py 8
_base_ = ['./allinone.py']
