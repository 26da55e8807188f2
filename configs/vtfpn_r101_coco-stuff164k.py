# Paper Table 9, "R-101 VT-FPN": vtfpn_r50_coco-stuff164k.py on an MSRA ResNet-101, i.e.
# fpn_r101_coco-stuff164k.py with the VT-FPN neck.
_base_ = './vtfpn_r50_coco-stuff164k.py'
model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(
            type='Pretrained', checkpoint='open-mmlab://detectron2/resnet101_caffe')))
