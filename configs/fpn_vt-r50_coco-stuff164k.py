# Semantic FPN on a VT-R50 backbone, COCO-Stuff 164k: fpn_r50_coco-stuff164k.py with the
# ResNet-50's last stage replaced by 3 VT modules (paper Sec. 4.1, VT-ResNet). The paper
# evaluates VT-ResNets on ImageNet only; this pairs one with the Table 9 segmentation recipe.
# Nothing but the backbone and the pyramid's channels/strides differs from
# fpn_r50_coco-stuff164k.py.
_base_ = './fpn_r50_coco-stuff164k.py'
model = dict(
    backbone=dict(
        # ResNet's num_stages/strides/dilations have 4 entries there; VTResNet takes 3.
        _delete_=True,
        type='VTResNet',
        depth=50,  # 3 VT modules, 16 tokens x 1024 channels, on stage 3's 1024 channels
        # Pyramid levels: layer1 (stride 4), layer2 (8), layer3 (16) and the VT stage's
        # projected map (16: the VT stage keeps stage 3's resolution, there is no stride 32).
        out_indices=(0, 1, 2, 3),
        # Stem and stages 1-3 as in fpn_r50_coco-stuff164k.py: MSRA (caffe-style) R-50 weights, frozen
        # BN statistics, stem + layer1 frozen. The VT stage (LayerNorm only) trains from its
        # initialisation: the checkpoint's layer4.* and fc.* are reported as not used.
        style='caffe',
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,
        frozen_stages=1,
        init_cfg=dict(
            type='Pretrained', checkpoint='open-mmlab://detectron2/resnet50_caffe')),
    # FPN's fourth input is the VT output: 1024 channels instead of layer4's 2048.
    neck=dict(in_channels=[256, 512, 1024, 1024]),
    # The fourth level is at stride 16 (not 32): its FPNHead branch upsamples 4x, not 8x.
    decode_head=dict(feature_strides=[4, 8, 16, 16]))
