# Paper Table 10, "R101 FPN": fpn_r50_lip.py on an MSRA ResNet-101.
_base_ = './fpn_r50_lip.py'
model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(
            type='Pretrained', checkpoint='open-mmlab://detectron2/resnet101_caffe')))
