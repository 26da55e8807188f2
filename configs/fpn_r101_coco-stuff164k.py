# Paper Table 9, "R-101 FPN": fpn_r50_coco-stuff164k.py on an MSRA ResNet-101.
_base_ = './fpn_r50_coco-stuff164k.py'
model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(
            type='Pretrained', checkpoint='open-mmlab://detectron2/resnet101_caffe')))
