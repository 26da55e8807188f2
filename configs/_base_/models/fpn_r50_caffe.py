# Semantic FPN on an MSRA (caffe-style) ResNet-50: the Panoptic-FPN semantic branch the
# paper uses as its baseline (Sec. 5.2, "FPN"). Adapted from mmseg 1.2.2
# configs/_base_/models/fpn_r50.py; every change from that file is commented.
# Dataset configs set `num_classes` and the data preprocessor's padding.

# SyncBN in the neck and head, as in the paper's recipes ("SyncBN in VT-FPN"). A
# single-process run (CPU or one GPU) turns it into BN by itself.
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    # The MSRA weights expect caffe input: BGR, 0-255, mean subtracted, no std division
    # (detectron2 PIXEL_MEAN/PIXEL_STD for MSRA models; mmdet's *-caffe configs use the same
    # values). mmseg's fpn_r50.py uses torchvision RGB mean/std instead.
    mean=[103.530, 116.280, 123.675],
    std=[1.0, 1.0, 1.0],
    bgr_to_rgb=False,  # mmcv loads images as BGR: keep them BGR
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        # mmseg's fpn_r50.py: ResNetV1c (deep 3x3 stem, stride in the 3x3 conv). The paper's
        # FLOPs fit detectron2's MSRA ResNet: plain 7x7 stem, stride in the 1x1 conv, which is
        # mmseg's ResNet with style='caffe'.
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 1, 1),
        strides=(1, 2, 2, 2),
        style='caffe',
        # The MSRA weights store BatchNorm folded into a per-channel affine (running mean 0,
        # variance 1; see detectron2's FrozenBatchNorm2d). Batch statistics would discard
        # the ImageNet statistics, so the backbone keeps them frozen as detectron2 does
        # (FrozenBN): no gradient, eval mode. mmseg's fpn_r50.py trains SyncBN here.
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,
        # detectron2's default MODEL.BACKBONE.FREEZE_AT=2: stem and res2 frozen.
        # mmseg's fpn_r50.py freezes nothing (-1).
        frozen_stages=1,
        init_cfg=dict(
            type='Pretrained',
            # open-mmlab://detectron2/resnet50_caffe is resnet50_msra-5891d200.pth in
            # mmengine/hub/openmmlab.json: detectron2's ImageNet MSRA R-50.
            checkpoint='open-mmlab://detectron2/resnet50_caffe')),
    neck=dict(
        type='FPN',
        in_channels=[256, 512, 1024, 2048],
        out_channels=256,
        num_outs=4),
    decode_head=dict(
        type='FPNHead',
        in_channels=[256, 256, 256, 256],
        in_index=[0, 1, 2, 3],
        feature_strides=[4, 8, 16, 32],
        channels=128,  # Panoptic-FPN semantic branch width (detectron2 CONVS_DIM=128)
        # The Panoptic-FPN semantic branch has no dropout; mmseg's fpn_r50.py uses 0.1.
        dropout_ratio=0.0,
        num_classes=19,  # set by each dataset config
        # detectron2's semantic head uses GroupNorm; the paper trains with SyncBN.
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    # model training and testing settings
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
